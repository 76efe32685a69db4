import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


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
