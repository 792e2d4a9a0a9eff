"""Regenerate the README pictures with the project itself.

    python docs/generate_images.py            # docs/kinds.png (core API only)

``docs/collage.png`` is the real collage written by ``fractal-pipeline run``
(copied from ``$DAGSTER_HOME/fractals/collages/fractal_collage.png``).
"""

from __future__ import annotations

from pathlib import Path

from fractal_pipeline.fractals import KINDS, FractalSpec, make_collage, render

HERE = Path(__file__).parent
SHOWN = ["dragon", "koch_snowflake", "hilberts", "peano_gosper", "sierpinski_arrowhead", "levy_c", "moore", "triangle"]
PALETTES = ["rainbow", "ice", "fire", "forest"]


def main() -> None:
    specs = [
        FractalSpec(kind, KINDS[kind].random_depths[1] - 1, size=512, palette=PALETTES[i % len(PALETTES)])
        for i, kind in enumerate(SHOWN)
    ]
    tiles = [(spec.key, render(spec)) for spec in specs]
    make_collage(tiles, tile=256, columns=4).save(HERE / "kinds.png", optimize=True)
    print(HERE / "kinds.png")


if __name__ == "__main__":
    main()
