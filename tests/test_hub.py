"""Hub side of SparseVDiTConfig, offline: a hand-built HF cache, and HfApi calls captured instead of sent."""

import io
import re
import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from diffusers_sparse_vdit import SparseVDiTConfig, __version__
from diffusers_sparse_vdit import hub as hub_module
from diffusers_sparse_vdit.config import _read_config_json
from diffusers_sparse_vdit.plots import matplotlib_available

from .maps import DIFFUSERS_TRANSFORMER_CONFIG, make_config, map_files, put_in_hf_cache

SHA_MAIN = "a" * 40
SHA_V2 = "b" * 40


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as a user sets it (huggingface_hub reads the variable at import, so patch the constant too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def cache(tmp_path):
    """A cache with user/map at two revisions: main (3 layers) and the branch/tag v2 (4 layers)."""
    cache_dir = tmp_path / "hf-cache"
    put_in_hf_cache(cache_dir, "user/map", map_files(make_config(layers=3), tmp_path), commit=SHA_MAIN)
    put_in_hf_cache(cache_dir, "user/map", map_files(make_config(layers=4), tmp_path), commit=SHA_V2, refs=("v2",))
    return cache_dir


# Loading from the cache -----------------------------------------------------------------------
def test_load_from_cache_with_hf_hub_offline(cache):
    assert SparseVDiTConfig.from_pretrained("user/map", cache_dir=cache) == make_config(layers=3)


def test_load_from_cache_with_local_files_only(cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    loaded = SparseVDiTConfig.from_pretrained("user/map", cache_dir=cache, local_files_only=True)
    assert loaded == make_config(layers=3)


@pytest.mark.parametrize("revision, layers", [(None, 3), ("main", 3), ("v2", 4), (SHA_MAIN, 3), (SHA_V2, 4)])
def test_revision_selects_the_snapshot(cache, revision, layers):
    loaded = SparseVDiTConfig.from_pretrained("user/map", revision=revision, cache_dir=cache, local_files_only=True)
    assert loaded.num_layers == layers


def test_subfolder(tmp_path):
    files = map_files(make_config(layers=2), tmp_path, prefix="wan-480p/")
    put_in_hf_cache(tmp_path / "c", "user/maps", files, commit=SHA_MAIN)
    loaded = SparseVDiTConfig.from_pretrained("user/maps", subfolder="wan-480p", cache_dir=tmp_path / "c")
    assert loaded == make_config(layers=2)
    # and from a local folder
    make_config().save_pretrained(tmp_path / "local" / "sub")
    assert SparseVDiTConfig.from_pretrained(tmp_path / "local", subfolder="sub") == make_config()


def test_not_in_the_cache_says_so(cache):
    with pytest.raises(
        FileNotFoundError, match=r"config.json of user/other is not in the Hugging Face cache .* HF_HUB_OFFLINE=1"
    ):
        SparseVDiTConfig.from_pretrained("user/other", cache_dir=cache)
    with pytest.raises(
        FileNotFoundError, match=r"user/map@v3 is not in the Hugging Face cache .*local_files_only=True"
    ):
        SparseVDiTConfig.from_pretrained("user/map", revision="v3", cache_dir=cache, local_files_only=True)


def test_a_diffusers_model_repo_is_not_a_map(tmp_path):
    # The transformer folder of a pipeline repo: config.json, weights, no mode map. We must say
    # "not a map" from config.json alone, without asking for mode_map.safetensors (not cached).
    put_in_hf_cache(
        tmp_path,
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        {"transformer/config.json": DIFFUSERS_TRANSFORMER_CONFIG, "model_index.json": b"{}"},
        commit=SHA_MAIN,
    )
    with pytest.raises(ValueError, match="config of a diffusers WanTransformer3DModel"):
        SparseVDiTConfig.from_pretrained(
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", subfolder="transformer", cache_dir=tmp_path
        )
    with pytest.raises(
        FileNotFoundError, match="not in the Hugging Face cache"
    ):  # the pipeline root has no config.json
        SparseVDiTConfig.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", cache_dir=tmp_path)


def test_repo_without_mode_map(tmp_path):
    files = map_files(make_config(), tmp_path)
    del files["mode_map.safetensors"]
    put_in_hf_cache(tmp_path / "c", "user/half", files, commit=SHA_MAIN)
    with pytest.raises(FileNotFoundError, match="mode_map.safetensors of user/half"):
        SparseVDiTConfig.from_pretrained("user/half", cache_dir=tmp_path / "c")


# What goes to hf_hub_download, and what its errors become --------------------------------------
def test_download_arguments(monkeypatch, tmp_path):
    folder = make_config().save_files(tmp_path / "files")
    seen = []

    def download(repo_id, filename, **kwargs):
        seen.append((repo_id, filename, kwargs))
        return str(folder / filename)

    monkeypatch.setattr(hub_module, "hf_hub_download", download)
    loaded = SparseVDiTConfig.from_pretrained("user/map", revision="v2", token="hf_x", force_download=True)
    assert loaded == make_config()
    assert [(repo, name) for repo, name, _ in seen] == [
        ("user/map", "config.json"),
        ("user/map", "mode_map.safetensors"),
    ]
    kwargs = seen[1][2]
    assert (kwargs["revision"], kwargs["token"], kwargs["force_download"]) == ("v2", "hf_x", True)
    assert (kwargs["library_name"], kwargs["library_version"]) == ("diffusers-sparse-vdit", __version__)  # user agent


# RemoteEntryNotFoundError (huggingface_hub >= 1.0) is what a missing file on the Hub raises
REMOTE_ENTRY_NOT_FOUND = getattr(huggingface_hub.errors, "RemoteEntryNotFoundError", EntryNotFoundError)


@pytest.mark.parametrize(
    "error, message",
    [
        (RepositoryNotFoundError, "no folder of that name.*does not exist, or it is private or gated.*hf auth login"),
        (RevisionNotFoundError, "user/map has no revision 'v9'"),
        (REMOTE_ENTRY_NOT_FOUND, "user/map@v9 has no config.json. It is not a Sparse-vDiT mode map"),
    ],
)
def test_hub_errors_say_what_to_do(monkeypatch, error, message):
    def download(*args, **kwargs):
        raise error("404 Client Error", response=SimpleNamespace(headers={}, request=None, status_code=404))

    monkeypatch.setattr(hub_module, "hf_hub_download", download)
    with pytest.raises(OSError, match=message) as caught:
        SparseVDiTConfig.from_pretrained("user/map", revision="v9")
    assert isinstance(caught.value.__cause__, error)  # the Hub's own error stays attached


# Pushing ------------------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Capture what HfApi would do: the created repo and branch, and a copy of the uploaded folder."""
    calls = {"uploaded": tmp_path / "uploaded"}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        calls["create_repo"] = dict(repo_id=repo_id, private=private, exist_ok=exist_ok, user_agent=self.library_name)
        full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub adds the user's namespace
        return RepoUrl(f"https://huggingface.co/{full}")

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        calls["create_branch"] = dict(repo_id=repo_id, branch=branch, exist_ok=exist_ok)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, calls["uploaded"])
        calls["upload_folder"] = dict(repo_id=repo_id, **kwargs)
        return f"https://huggingface.co/{repo_id}/commit/{SHA_MAIN}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_map_with_its_card(hub):
    config = make_config(
        base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", calibration={"height": 480, "width": 832, "num_frames": 81}
    )
    url = config.push_to_hub("user/wan-map", private=True, token="hf_test")
    assert url.endswith(SHA_MAIN)
    assert hub["create_repo"] == dict(
        repo_id="user/wan-map", private=True, exist_ok=True, user_agent="diffusers-sparse-vdit"
    )
    assert "create_branch" not in hub
    assert hub["upload_folder"]["repo_id"] == "user/wan-map" and not hub["upload_folder"]["create_pr"]

    folder = hub["uploaded"]
    files = {"README.md", "config.json", "mode_map.safetensors"} | (
        {"mode_map.png"} if matplotlib_available() else set()
    )
    assert {p.name for p in folder.iterdir()} == files
    assert SparseVDiTConfig.from_pretrained(folder) == config
    assert _read_config_json(folder / "config.json")["base_model"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "diffusers-sparse-vdit"
    assert card.data.pipeline_tag == "text-to-video"
    assert card.data.base_model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert {"sparse-attention", "video-generation", "sparse-vdit", "wan"} <= set(card.data.tags)
    assert 'SparseVDiTProcessor.from_pretrained("user/wan-map")' in card.text


def test_pushed_card_shows_the_picture(hub):
    pytest.importorskip("matplotlib")
    from PIL import Image

    make_config().push_to_hub("user/wan-map")
    assert "](mode_map.png)" in (hub["uploaded"] / "README.md").read_text()
    image = Image.open(io.BytesIO((hub["uploaded"] / "mode_map.png").read_bytes()))
    assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_push_to_a_branch_or_as_a_pull_request(hub):
    make_config().push_to_hub("wan-map", revision="v2", create_pr=True, commit_message="new map")
    assert hub["create_repo"]["repo_id"] == "wan-map"
    assert hub["create_branch"] == dict(repo_id="me/wan-map", branch="v2", exist_ok=True)
    upload = hub["upload_folder"]
    assert (upload["repo_id"], upload["revision"], upload["create_pr"], upload["commit_message"]) == (
        "me/wan-map",
        "v2",
        True,
        "new map",
    )
    assert 'from_pretrained("me/wan-map")' in (hub["uploaded"] / "README.md").read_text()  # the namespaced id


def test_save_pretrained_with_push_to_hub(hub, tmp_path):
    make_config().save_pretrained(tmp_path / "wan-map", push_to_hub=True, private=False)
    assert hub["create_repo"]["repo_id"] == "wan-map" and hub["create_repo"]["private"] is False  # the folder's name
    assert SparseVDiTConfig.from_pretrained(hub["uploaded"]) == SparseVDiTConfig.from_pretrained(tmp_path / "wan-map")


@pytest.mark.parametrize("path", ["./wan-mapp", "../maps/wan-mapp", "/no/such/wan-map", "maps/wan/v2", "wan-mapp/"])
def test_a_mistyped_folder_is_not_taken_for_a_repo(path, monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError(f"{path!r} went to the Hub")

    monkeypatch.setattr(hub_module, "hf_hub_download", download)
    with pytest.raises(FileNotFoundError, match=f"folder {re.escape(path)} does not exist"):
        SparseVDiTConfig.from_pretrained(path)


def test_a_file_is_not_a_map_folder(tmp_path):
    (tmp_path / "map.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file, not a map folder"):
        SparseVDiTConfig.from_pretrained(tmp_path / "map.json")


def test_repo_ids_still_go_to_the_hub():
    assert not hub_module.looks_local("user/wan-map") and not hub_module.looks_local("wan-map")
    assert hub_module.looks_local("./wan-map") and hub_module.looks_local("~/maps/wan") and hub_module.looks_local("a/b/c")


def test_push_a_two_expert_map_and_load_it_back(hub, tmp_path):
    low = make_config(layers=2, calibration={"height": 480, "width": 832, "num_frames": 81})
    config = make_config(base_model="Wan-AI/Wan2.2-T2V-A14B-Diffusers", transformer_2=low,
                         calibration={"height": 480, "width": 832, "num_frames": 81})
    config.push_to_hub("user/wan22-map")
    folder = hub["uploaded"]
    assert {"config.json", "mode_map.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    assert SparseVDiTConfig.from_pretrained(folder) == config
    # and through the HF cache, as from_pretrained("user/wan22-map") finds it after a download
    files = {name: (folder / name).read_bytes() for name in ("config.json", "mode_map.safetensors")}
    put_in_hf_cache(tmp_path / "cache", "user/wan22-map", files, commit=SHA_MAIN)
    loaded = SparseVDiTConfig.from_pretrained("user/wan22-map", cache_dir=tmp_path / "cache")
    assert loaded == config and loaded.transformer_2 == low
    card = (folder / "README.md").read_text()
    assert "**Two experts.**" in card and "`transformer_2`: 2 layers x 5 heads" in card
    assert 'apply_sparse_vdit(pipe, "user/wan22-map")' in card and "set_attn_processor" not in card
