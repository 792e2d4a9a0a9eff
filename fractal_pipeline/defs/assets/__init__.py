"""The three assets: fractal_specs -> fractal_images (one partition per spec) -> fractal_collage."""

from fractal_pipeline.defs.assets.collage import fractal_collage
from fractal_pipeline.defs.assets.images import fractal_images
from fractal_pipeline.defs.assets.specs import fractal_specs

assets = [fractal_specs, fractal_images, fractal_collage]

__all__ = ["assets", "fractal_collage", "fractal_images", "fractal_specs"]
