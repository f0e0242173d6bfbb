"""The data fingerprint follows content, not timestamps (what makes reruns content-driven)."""

import os

from cvpipe.datatree import iter_samples, tree_fingerprint


def make_tree(root):
    for cls, names in {"a": ["1.png", "2.png"], "b": ["x/3.png"]}.items():
        for name in names:
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{cls}/{name}".encode())


def test_samples_skip_hidden_and_root_files(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "README.txt").write_text("not a sample")
    (tmp_path / "a" / ".DS_Store").write_text("hidden")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "4.png").write_text("hidden class")
    samples = [(c, p.relative_to(tmp_path).as_posix()) for c, p in iter_samples(tmp_path)]
    assert samples == [("a", "a/1.png"), ("a", "a/2.png"), ("b", "b/x/3.png")]


def test_fingerprint_changes_with_content_not_mtime(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache.json"
    make_tree(root)
    first = tree_fingerprint(root, cache)
    for _, path in iter_samples(root):
        os.utime(path, (1, 1))  # like `touch` or `dvc pull`: new mtimes, same bytes
    assert tree_fingerprint(root, cache) == first

    (root / "a" / "1.png").write_bytes(b"changed pixels")
    changed = tree_fingerprint(root, cache)
    assert changed != first

    (root / "b" / "new.png").write_bytes(b"another image")
    assert tree_fingerprint(root, cache) not in (first, changed)


def test_fingerprint_sees_renames_and_cache_is_only_a_speedup(tmp_path):
    root = tmp_path / "data"
    make_tree(root)
    before = tree_fingerprint(root, tmp_path / "c1.json")
    (root / "a" / "2.png").rename(root / "b" / "2.png")  # same bytes, other class
    assert tree_fingerprint(root, tmp_path / "c1.json") != before
    # A fresh cache gives the same answer as a warm one.
    assert tree_fingerprint(root, tmp_path / "c1.json") == tree_fingerprint(
        root, tmp_path / "c2.json"
    )


def test_fingerprint_is_the_sha256_of_relative_paths_and_contents_from_any_spelling(
    tmp_path, monkeypatch
):
    """Relative paths inside the data set, "/"-joined at any depth: the same digest whichever
    way data.root is written (results stay valid when a user moves from data/ to ./data/)."""
    import hashlib

    make_tree(tmp_path / "data")
    expected = hashlib.sha256()
    for rel in ("a/1.png", "a/2.png", "b/x/3.png"):
        content = hashlib.sha256(rel.encode()).hexdigest()  # make_tree writes the path
        expected.update(f"{rel}\0{content}\n".encode())
    monkeypatch.chdir(tmp_path)
    for i, root in enumerate(["data", "./data/", str(tmp_path / "data"), "data/../data"]):
        assert tree_fingerprint(root, tmp_path / f"c{i}.json") == expected.hexdigest(), root
