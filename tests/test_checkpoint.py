import torch

from mmpretrain.engine.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint


def test_save_keeps_last_k_and_ignores_partial_files(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.ones(2) * step}, keep=2)
    (tmp_path / "step-000000040.pt.tmp-123").write_bytes(b"partial")  # an interrupted save
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-000000020.pt", "step-000000030.pt"]
    latest = resolve_resume(tmp_path, "latest")
    assert latest is not None and load_checkpoint(latest)["step"] == 30
    assert torch.equal(load_checkpoint(latest)["w"], torch.full((2,), 30.0))


def test_resume_latest_without_checkpoints_is_none_and_bad_path_errors(tmp_path):
    assert resolve_resume(tmp_path / "nothing", "latest") is None
    try:
        resolve_resume(tmp_path, str(tmp_path / "missing.pt"))
    except FileNotFoundError as e:
        assert "missing.pt" in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")
