"""Debian package fetch: real .deb files unpacked by dpkg, served by a stand-in apt-get on PATH."""

import logging

import pytest

from attnlab.data.debian import extract_debian_packages


@pytest.fixture
def work(tmp_path, fake_apt):
    """An empty work folder, with packages data-a and data-b in the fake repository."""
    fake_apt.add("data-a", {"usr/share/a/one.txt": "one"})
    fake_apt.add("data-b", {"usr/share/b/two.txt": "two"})
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def test_downloads_and_unpacks_every_package(work, fake_apt):
    root = extract_debian_packages(["data-a", "data-b"], work)
    assert root == work / "root"
    assert (root / "usr/share/a/one.txt").read_text() == "one"
    assert (root / "usr/share/b/two.txt").read_text() == "two"
    assert fake_apt.calls() == ["download data-a data-b"]


def test_a_failed_download_runs_apt_get_update_once_and_retries(tmp_path, work, fake_apt, monkeypatch, caplog):
    (tmp_path / "stale").touch()
    monkeypatch.setenv("FAKE_STALE", str(tmp_path / "stale"))
    with caplog.at_level(logging.WARNING, logger="attnlab.data.debian"):
        root = extract_debian_packages(["data-a"], work)
    assert (root / "usr/share/a/one.txt").read_text() == "one"
    assert fake_apt.calls() == ["download data-a", "update", "download data-a"]
    assert "running apt-get update" in caplog.text


def test_an_unknown_package_names_the_command_its_stderr_and_the_hint(work, fake_apt):
    with pytest.raises(
        RuntimeError,
        match=r"apt-get download data-a nope failed with exit code 100: "
        r"E: Unable to locate package nope; or pass source_dir=",
    ):
        extract_debian_packages(["data-a", "nope"], work, hint="or pass source_dir=")
    assert fake_apt.calls() == ["download data-a nope", "update", "download data-a nope"]


def test_missing_apt_get_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get not found: it is needed to fetch Debian packages; use X"):
        extract_debian_packages(["data-a"], tmp_path, hint="use X")


def test_a_broken_package_names_the_deb_and_dpkg_error(work, fake_apt):
    (fake_apt.repo / "data-a_1.0-1_all.deb").write_bytes(b"not an ar archive")
    with pytest.raises(RuntimeError, match=r"dpkg -x .*data-a_1\.0-1_all\.deb failed with exit code \d+: .+"):
        extract_debian_packages(["data-a"], work)
