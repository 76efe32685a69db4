"""Unlearning methods: one file per algorithm, registered by name (see base.py)."""
from ..errors import UserError
from .base import REGISTRY, EraseRequest, Eraser, MethodConfig, Sampler, get_method, register  # noqa: F401

# one import per method module (each registers itself)
from . import esd  # noqa: F401,E402
from . import esd_lora  # noqa: F401,E402
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
from . import speed  # noqa: F401,E402
from . import cure  # noqa: F401,E402
from . import adavd  # noqa: F401,E402
from . import safree  # noqa: F401,E402
from . import seot  # noqa: F401,E402
from . import gloce  # noqa: F401,E402
from . import stereo  # noqa: F401,E402
from . import sdd  # noqa: F401,E402
from . import taskvector  # noqa: F401,E402


def sampler_for(spec) -> Sampler:
    """The sampling hook of an inference-time artifact's spec, from the method registered for its type."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    owners = {cls.sampling_type: cls for cls in REGISTRY.values() if cls.kind == "sampling"}
    if kind not in owners:
        raise UserError(f"artifact asks for sampling of type {kind!r}, which this igmu does not know "
                        f"(it knows: {', '.join(sorted(owners))})")
    return owners[kind]().sampler(spec)
