"""Output folders: foreign files are never replaced without consent, and writes are all or
nothing (score artifacts, SAE folders, evaluation folders)."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest
import torch

from hf_sae_steer import FeatureScores
from hf_sae_steer.folders import MANIFEST, STAGING_PREFIX, check_output_folder, write_folder
from hf_sae_steer.sae import SAEConfig, build_sae

OURS = ("a.txt", "b.txt")


def write_ab(text):
    def write(folder):
        (folder / "a.txt").write_text(text)
        (folder / "b.txt").write_text(text)

    return write


def test_new_empty_and_own_folders_are_written(tmp_path):
    target = tmp_path / "out"
    write_folder(target, OURS, write_ab("1"))
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "a.txt", "b.txt"]
    # An earlier output of the same kind (recognised by is_ours) is replaced.
    write_folder(target, OURS, write_ab("2"), is_ours=lambda p: (p / "a.txt").exists())
    assert (target / "b.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_foreign_files_are_refused_then_kept_with_overwrite(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "a.txt").write_text("a user's own file with our name")
    with pytest.raises(FileExistsError, match="already holds files this command did not write"):
        write_folder(target, OURS, write_ab("new"))
    assert (target / "a.txt").read_text() == "a user's own file with our name"
    # --overwrite writes beside a user's files and keeps them all: one under our name is in
    # the way, and that is said.
    with pytest.raises(FileExistsError, match="holds a a.txt that this command did not write"):
        write_folder(target, OURS, write_ab("new"), overwrite=True)
    (target / "a.txt").unlink()
    write_folder(target, OURS, write_ab("new"), overwrite=True)
    assert (target / "config.json").read_text() == "{}"  # kept
    assert (target / "a.txt").read_text() == "new"
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        check_output_folder(target / "config.json", OURS)


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    write_folder(target, OURS, write_ab("old"))

    def half(folder):
        (folder / "a.txt").write_text("new")
        raise KeyboardInterrupt  # killed between two files

    with pytest.raises(KeyboardInterrupt):
        write_folder(target, OURS, half, is_ours=lambda p: True)
    assert (target / "a.txt").read_text() == "old" and (target / "b.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.fixture
def scores():
    return FeatureScores(scores=torch.rand(16), coverage=0.5, layer=0, site="resid_post")


def test_score_artifacts_keep_a_users_model_card(scores, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("# my model card\n")
    with pytest.raises(FileExistsError, match="README.md"):
        scores.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my model card\n"
    scores.save_pretrained(tmp_path / "art")
    scores.save_pretrained(tmp_path / "art")  # re-saving over our own artifact is fine


def test_an_inconsistent_artifact_is_refused(scores, tmp_path):
    a = scores.save_pretrained(tmp_path / "a")
    other = FeatureScores(scores=torch.rand(16), coverage=0.5)
    b = other.save_pretrained(tmp_path / "b")
    os.replace(b / "scores.safetensors", a / "scores.safetensors")  # a mixed copy
    with pytest.raises(ValueError, match="inconsistent"):
        FeatureScores.from_pretrained(a)


def test_incomplete_configs_name_the_file(scores, tmp_path):
    folder = scores.save_pretrained(tmp_path / "a")
    config = json.loads((folder / "steering_config.json").read_text())
    del config["sae"]
    (folder / "steering_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"steering_config.json lacks sae"):
        FeatureScores.from_pretrained(folder)
    (folder / "steering_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="steering_config.json is corrupt"):
        FeatureScores.from_pretrained(folder)


def test_sae_folders_are_written_atomically(tmp_path):
    cfg = SAEConfig(d_in=4, d_sae=8, activation="relu")
    sae = build_sae(cfg, {"W_enc": torch.ones(4, 8), "b_enc": torch.zeros(8),
                          "W_dec": torch.ones(8, 4), "b_dec": torch.zeros(4)})  # fmt: skip
    sae.save_pretrained(tmp_path / "sae")
    sae.save_pretrained(tmp_path / "sae")  # our own files (the manifest knows them)
    (tmp_path / "sae" / "cfg.json").write_text("{}")  # now the user's
    with pytest.raises(FileExistsError, match="cfg.json"):
        sae.save_pretrained(tmp_path / "sae")
    with pytest.raises(FileExistsError, match="cfg.json"):
        sae.save_pretrained(tmp_path / "sae", overwrite=True)
    assert (tmp_path / "sae" / "cfg.json").read_text() == "{}"
    (tmp_path / "sae" / "cfg.json").unlink()
    sae.save_pretrained(tmp_path / "sae", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        MANIFEST, "cfg.json", "sae_weights.safetensors"]  # fmt: skip


# -- issue 16: the working folder, links, mount points, several writers, crashes -----------


def user_files(folder):
    """A folder of a user's own files, nested ones too; returns {relative path: bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"note{i}.txt": f"mine {i}".encode() for i in range(6)}
    files["sub/nested.txt"] = b"nested"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def assert_kept(folder, files):
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name


def tiny_sae():
    cfg = SAEConfig(d_in=4, d_sae=8, activation="relu")
    return build_sae(cfg, {"W_enc": torch.ones(4, 8), "b_enc": torch.zeros(8),
                           "W_dec": torch.ones(8, 4), "b_dec": torch.zeros(4)})  # fmt: skip


def tiny_eval():
    from hf_sae_steer.evaluation.result import EvalResult

    row = {"label": "add", "kind": "steered", "method": "add", "preserve_error": True,
           "strength": 1.0, "norm_fraction": None, "n": 1, "tokens_per_s": 1.0,
           "perplexity_ratio": 1.1, "perplexity_ratio_lo": 1.0, "perplexity_ratio_hi": 1.2,
           "relevance_centroid_delta": 0.1,
           "relevance_centroid_delta_lo": 0.0, "relevance_centroid_delta_hi": 0.2}  # fmt: skip
    return EvalResult([row], [{"text": "x"}], {"n_prompts": 1})


WRITERS = {
    "scores": lambda path: FeatureScores(scores=torch.rand(16), coverage=0.5).save_pretrained(
        path, overwrite=True
    ),
    "sae": lambda path: tiny_sae().save_pretrained(path, overwrite=True),
    "eval": lambda path: tiny_eval().save(path, overwrite=True),
    "folder": lambda path: write_folder(path, OURS, write_ab("x"), overwrite=True),
}


@pytest.mark.parametrize("spec", [".", "", "sub/.."])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writing_into_the_working_folder_keeps_every_user_file(tmp_path, monkeypatch, spec, writer):
    work = tmp_path / "work"
    files = user_files(work)
    monkeypatch.chdir(work)
    WRITERS[writer](spec)
    assert_kept(work, files)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "work"]  # nothing beside it


def test_the_written_artifact_loads_from_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(user_files(tmp_path / "work") and tmp_path / "work")
    scores = FeatureScores(scores=torch.rand(16), coverage=0.5)
    scores.save_pretrained(".", overwrite=True)
    assert torch.equal(FeatureScores.from_pretrained(".").scores, scores.scores)


def test_a_linked_output_is_written_through_the_link(tmp_path):
    real = tmp_path / "real"
    files = user_files(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    write_folder(link, OURS, write_ab("1"), overwrite=True)
    write_folder(link, OURS, write_ab("2"), overwrite=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "a.txt").read_text() == "2"  # the target holds the new output
    assert_kept(real, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .old links


def test_a_dangling_link_is_refused_with_its_path(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"out is a link to .*gone, which does not exist"):
        check_output_folder(link, OURS)
    with pytest.raises(FileNotFoundError, match="which does not exist"):
        write_folder(link, OURS, write_ab("1"))
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_files_are_written_inside_the_target_so_every_rename_stays_on_its_filesystem(tmp_path):
    # A mount point (or a folder on another filesystem than its parent) cannot be renamed over:
    # the folder handed to write() must lie inside the target, whose files are then renamed
    # into place one by one on the target's own filesystem.
    target = tmp_path / "out"
    seen = []

    def write(folder):
        seen.append(folder)
        write_ab("1")(folder)

    write_folder(target, OURS, write)
    assert seen[0].resolve().parent == target.resolve()


def test_a_mount_point_is_written_in_place():
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.path.ismount(shm) and os.access(shm, os.W_OK)):
        pytest.skip("needs /dev/shm, a writable mount point (a tmpfs on Linux)")
    names = tuple(f"hf-sae-steer-test-{uuid.uuid4().hex}-{n}" for n in OURS)

    def write(folder):
        for name in names:
            (folder / name).write_text("on tmpfs")

    before = set(os.listdir(shm))
    try:
        write_folder(shm, names, write, overwrite=True)  # /dev/shm holds others' files
        assert all((shm / name).read_text() == "on tmpfs" for name in names)
        assert before <= set(os.listdir(shm))  # nothing of anybody else's moved or removed
    finally:
        for name in (*names, MANIFEST):
            (shm / name).unlink(missing_ok=True)


def _write_concurrently(target, overwrite, barrier):
    barrier.wait()
    mark = f"writer {os.getpid()}"
    write_folder(target, OURS, write_ab(mark), overwrite=overwrite)


@pytest.mark.parametrize("users", [True, False], ids=["beside-a-users-files", "new-folder"])
def test_several_writers_at_once_never_lose_a_users_file(tmp_path, users):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    target = tmp_path / "out"
    files = user_files(target) if users else {}
    for _round in range(5):
        barrier = context.Barrier(4)
        writers = [context.Process(target=_write_concurrently, args=(target, users, barrier))
                   for _ in range(4)]  # fmt: skip
        for w in writers:
            w.start()
        for w in writers:
            w.join(60)
        assert [w.exitcode for w in writers] == [0, 0, 0, 0]
        assert_kept(target, files)
        # The output is one writer's, whole: both files from the same writer.
        assert (target / "a.txt").read_text() == (target / "b.txt").read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .old/.tmp piles
        left = {p.name for p in target.iterdir()} - set(files) - {"sub", *OURS, MANIFEST}
        assert not left, left


def test_a_users_files_never_move_even_when_the_write_fails(tmp_path):
    target = tmp_path / "out"
    files = user_files(target)
    inodes = {name: os.stat(target / name).st_ino for name in files}

    def write_and_look(folder):
        write_ab("x")(folder)
        # While we write, every user file is where it was (the same file, not a copy).
        assert {name: os.stat(target / name).st_ino for name in files} == inodes
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder(target, OURS, write_and_look, overwrite=True)
    assert_kept(target, files)
    assert {p.name for p in target.iterdir()} == {*files, "sub"} - {"sub/nested.txt"}


def test_old_leftovers_that_may_hold_a_users_files_are_never_removed(tmp_path):
    # hf_sae_steer 0.2 swapped folders: a crash inside the swap left the user's files in a
    # .NAME.tmp-* (or .NAME.old-*) folder beside the target. Never delete those.
    target = tmp_path / "out"
    for leftover in (tmp_path / ".out.tmp-dead", tmp_path / ".out.old-dead"):
        leftover.mkdir()
        (leftover / "thesis.tex").write_text("years of work")
        old = os.stat(leftover).st_mtime - 10 * 600
        os.utime(leftover, (old, old))
    write_folder(target, OURS, write_ab("1"))
    assert (tmp_path / ".out.tmp-dead" / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / ".out.old-dead" / "thesis.tex").read_text() == "years of work"


def test_a_dead_writers_staging_folder_is_cleared_by_the_next_write(tmp_path):
    target = tmp_path / "out"
    write_folder(target, OURS, write_ab("1"))
    dead = target / f"{STAGING_PREFIX}dead"
    dead.mkdir()
    (dead / "a.txt").write_text("half")
    write_folder(target, OURS, write_ab("2"))
    assert not dead.exists() and (target / "a.txt").read_text() == "2"


def test_outputs_follow_the_umask_and_the_parents_group(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    old = os.umask(0o002)
    try:
        write_folder(shared / "out", OURS, write_ab("1"))
        FeatureScores(scores=torch.rand(4), coverage=0.5).save_pretrained(shared / "art")
    finally:
        os.umask(old)
    for folder in (shared / "out", shared / "art"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o2775, oct(os.stat(folder).st_mode)
        for item in folder.iterdir():
            assert stat.S_IMODE(os.stat(item).st_mode) == 0o664, (item, oct(os.stat(item).st_mode))


def test_overwrite_keeps_a_users_own_model_card(scores, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("# my model card\n")
    (folder / "model.safetensors").write_bytes(b"weights")
    scores.save_pretrained(folder, overwrite=True)
    assert (folder / "README.md").read_text() == "# my model card\n"  # theirs, kept
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert torch.equal(FeatureScores.from_pretrained(folder).scores, scores.scores)
    # Our own card is ours to replace; once the user edits it, it is theirs.
    own = scores.save_pretrained(tmp_path / "art")
    scores.save_pretrained(own)
    (own / "README.md").write_text("# edited by hand\n")
    with pytest.raises(FileExistsError, match="README.md"):
        scores.save_pretrained(own)
    scores.save_pretrained(own, overwrite=True)
    assert (own / "README.md").read_text() == "# edited by hand\n"


def test_a_users_file_with_an_artifacts_name_is_never_replaced(scores, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "steering_config.json").write_text('{"my": "settings"}')
    with pytest.raises(FileExistsError, match="steering_config.json"):
        scores.save_pretrained(folder, overwrite=True)
    assert (folder / "steering_config.json").read_text() == '{"my": "settings"}'


def test_an_artifact_written_before_manifests_is_still_ours(scores, tmp_path):
    folder = scores.save_pretrained(tmp_path / "art")
    (folder / MANIFEST).unlink()  # as hf_sae_steer 0.2 wrote it
    scores.save_pretrained(folder)  # recognised by its config, no --overwrite needed
    assert (folder / MANIFEST).is_file()
