"""The version of the rendering core, recorded with every partition's timings."""

from typing import Final

#: Bumped whenever the rendering changes (its pixels or its speed): timings recorded under another
#: version no longer predict this core's, so the cost model leaves them out.
CORE_VERSION: Final = "1"
