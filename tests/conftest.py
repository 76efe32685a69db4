import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as the CLI sets it (transformers reads it on import)

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # CI: 2 cores


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory):
    from igmu.models.tiny import make_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny") / "sd1"
    make_tiny_pipeline("sd1").save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory):
    from igmu.models.tiny import make_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny") / "sd2"
    make_tiny_pipeline("sd2").save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def plain_unet_model(tmp_path_factory):
    """A tiny SD1-style pipeline whose UNet has no transformer blocks (no cross-attention, no FFN):
    the model that attention-editing methods must refuse with one clear line."""
    from diffusers import UNet2DConditionModel

    from igmu.models.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline("sd1")
    pipe.unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                     block_out_channels=(16, 32), down_block_types=("DownBlock2D",) * 2,
                                     up_block_types=("UpBlock2D",) * 2, mid_block_type=None, norm_num_groups=8,
                                     cross_attention_dim=32)
    pipe.register_modules(unet=pipe.unet)
    path = tmp_path_factory.mktemp("plain") / "sd1-plain"
    pipe.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random transformers CLIP (mini-world tokenizer) saved with its image processor: a local CLIP."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from igmu.world.judges import JUDGES_DIR

    tok = CLIPTokenizer.from_pretrained(str(JUDGES_DIR / "clip"))
    torch.manual_seed(0)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, num_channels=3)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(path))
    return path


def _tiny(tmp_path_factory, kind):
    from igmu.models.tiny import make_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny") / kind
    make_tiny_pipeline(kind).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    return _tiny(tmp_path_factory, "sdxl")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    return _tiny(tmp_path_factory, "sd3")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    return _tiny(tmp_path_factory, "flux")
