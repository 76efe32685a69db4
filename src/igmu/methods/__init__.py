"""Unlearning methods: one file per algorithm, registered by name (see base.py)."""
from .base import REGISTRY, EraseRequest, Eraser, MethodConfig, get_method, register  # noqa: F401

# one import per method module (each registers itself)
from . import esd  # noqa: F401,E402
from . import uce  # noqa: F401,E402
from . import mace  # noqa: F401,E402
from . import fmn  # noqa: F401,E402
from . import conceptprune  # noqa: F401,E402
from . import negprompt  # noqa: F401,E402
from . import sld  # noqa: F401,E402
from . import spm  # noqa: F401,E402
from . import rece  # noqa: F401,E402
from . import advunlearn  # noqa: F401,E402
from . import receler  # noqa: F401,E402
from . import ca  # noqa: F401,E402
from . import doco  # noqa: F401,E402
from . import sa  # noqa: F401,E402
from . import salun  # noqa: F401,E402
from . import erasediff  # noqa: F401,E402
from . import scissorhands  # noqa: F401,E402
