"""The pure decisions and shared-volume files of ``tls/acme.py`` (the CA itself: test_acme in
tests/integration, against Pebble)."""

from __future__ import annotations

import datetime
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tls import acme
from tls.acme import ChallengeDirectory, Lease, LeaseFile

UTC = datetime.UTC
START = datetime.datetime(2026, 11, 1, tzinfo=UTC)


# --- renewal and retry --------------------------------------------------------------------------

def test_renewal_when_a_third_of_the_lifetime_is_left() -> None:
    end = START + datetime.timedelta(days=90)
    assert acme.renewal_time(START, end) == START + datetime.timedelta(days=60)


def test_renewal_follows_the_cas_suggestion_but_never_after_expiry() -> None:
    end = START + datetime.timedelta(days=90)
    suggested = START + datetime.timedelta(days=70)
    assert acme.renewal_time(START, end, suggested) == suggested
    assert acme.renewal_time(START, end, end + datetime.timedelta(days=5)) == end


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0.001, max_value=1e4),
       st.floats(min_value=0.001, max_value=1e6))
def test_retry_delay_grows_and_is_bounded(failures: int, initial: float, maximum: float) -> None:
    delay = acme.retry_delay(failures, initial, maximum)
    assert delay <= maximum
    assert delay >= min(initial, maximum)
    assert acme.retry_delay(failures + 1, initial, maximum) >= delay


def test_retry_delay_doubles() -> None:
    assert [acme.retry_delay(n, 60, 600) for n in range(6)] == [0, 60, 120, 240, 480, 600]


# --- preflight and names ------------------------------------------------------------------------

@pytest.mark.parametrize(("resolved", "expected", "ok"), [
    ({"192.0.2.7"}, (), True),  # nothing required
    (set(), (), True),
    ({"192.0.2.7", "2001:db8::1"}, ("2001:db8::1",), True),
    ({"192.0.2.8"}, ("192.0.2.7",), False),
    (set(), ("192.0.2.7",), False),  # no record yet: wait
])
def test_preflight(resolved: set[str], expected: tuple[str, ...], ok: bool) -> None:
    assert acme.preflight_ok(resolved, expected) is ok


def test_covers_is_case_insensitive_and_needs_every_name() -> None:
    assert acme.covers(["Track.Mail.Test", "send.mail.test"], ["track.mail.test"])
    assert not acme.covers(["track.mail.test"], ["track.mail.test", "send.mail.test"])


def test_certificate_file_name_is_one_the_store_serves() -> None:
    name = acme.certificate_file_name(["track.mail.test", "send.mail.test"])
    assert name == "acme-track.mail.test.pem"
    assert not name.startswith(".")


# --- challenge paths ----------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "token"), [
    (b"/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
     "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"),
    (b"/.well-known/acme-challenge/", None),
    (b"/.well-known/acme-challenge/../account.key", None),
    (b"/.well-known/acme-challenge/a/b", None),
    (b"/.well-known/acme-challenge/%2e%2e", None),
    (b"/.well-known/acme-challenge/\xff", None),
    (b"/.well-known/acme-challengeX", None),
    (b"/click/abc", None),
])
def test_challenge_token(path: bytes, token: str | None) -> None:
    assert acme.challenge_token(path) == token


@given(st.binary(max_size=300))
def test_challenge_token_never_leaves_the_directory(suffix: bytes) -> None:
    token = acme.challenge_token(acme.CHALLENGE_PREFIX + suffix)
    if token is not None:
        assert token.encode() == suffix
        assert "/" not in token
        assert token not in (".", "..")
        assert 1 <= len(token) <= 256


def test_challenge_directory_publish_answer_withdraw(tmp_path: Path) -> None:
    challenges = ChallengeDirectory(tmp_path)
    assert challenges.answer(b"/.well-known/acme-challenge/tok-1") is None
    challenges.publish("tok-1", "tok-1.thumbprint")
    assert challenges.answer(b"/.well-known/acme-challenge/tok-1") == b"tok-1.thumbprint"
    # another replica's view of the same volume
    assert ChallengeDirectory(tmp_path).answer(b"/.well-known/acme-challenge/tok-1") == \
        b"tok-1.thumbprint"
    challenges.withdraw("tok-1")
    challenges.withdraw("tok-1")  # twice is harmless
    assert challenges.answer(b"/.well-known/acme-challenge/tok-1") is None
    with pytest.raises(ValueError, match="not an ACME token"):
        challenges.publish("../x", "y")


# --- leases -------------------------------------------------------------------------------------

@given(st.text(min_size=1, max_size=50), st.floats(min_value=0, max_value=4e9))
def test_lease_round_trip(owner: str, expires: float) -> None:
    assert acme.parse_lease(Lease(owner, expires).encode()) == Lease(owner, expires)


@given(st.binary(max_size=200))
def test_parse_lease_never_raises(data: bytes) -> None:
    lease = acme.parse_lease(data)
    assert lease is None or (lease.owner and isinstance(lease.expires, float))


@pytest.mark.parametrize("data", [
    b"", b'{"owner": "a"', b"[]", b'{"owner": "", "expires": 5}', b'{"owner": "a"}',
    b'{"owner": "a", "expires": "5"}', b'{"owner": "a", "expires": true}',
    b'{"owner": "a", "expires": NaN}', b'{"owner": "a", "expires": Infinity}',
    b'{"owner": 5, "expires": 5}',
])
def test_parse_lease_refuses(data: bytes) -> None:
    assert acme.parse_lease(data) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_lease_is_exclusive_until_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    a = LeaseFile(tmp_path, "track.mail.test", "pod-a/1", clock)
    b = LeaseFile(tmp_path, "track.mail.test", "pod-b/1", clock)
    assert a.claim(ttl=60)
    assert a.confirm()
    assert not b.claim(ttl=60)
    assert not b.confirm()
    clock.now += 61  # a crashed: its lease runs out
    assert b.claim(ttl=60)
    assert b.confirm()
    assert not a.confirm()
    a.release()  # not a's any more: left alone
    assert b.confirm()
    b.release()
    assert not b.path.exists()


def test_simultaneous_claims_confirm_exactly_one(tmp_path: Path) -> None:
    # Both read "no lease" and both write; whoever wrote last holds it, and both agree.
    a = LeaseFile(tmp_path, "n", "a")
    b = LeaseFile(tmp_path, "n", "b")
    assert a.holder() is None
    assert b.holder() is None
    barrier = threading.Barrier(2)

    def claim(lease: LeaseFile) -> None:
        barrier.wait()
        lease.claim()

    threads = [threading.Thread(target=claim, args=(lease,)) for lease in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.confirm(), b.confirm()].count(True) == 1


def test_a_garbled_lease_counts_as_free(tmp_path: Path) -> None:
    lease = LeaseFile(tmp_path, "n", "a")
    lease.path.parent.mkdir(parents=True)
    lease.path.write_bytes(b'{"owner": "b", "exp')
    assert lease.holder() is None
    assert lease.claim()
    assert json.loads(lease.path.read_bytes())["owner"] == "a"


# --- files --------------------------------------------------------------------------------------

def test_write_atomic_leaves_no_temporary_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "acme-x.pem"
    acme.write_atomic(target, b"one")
    acme.write_atomic(target, b"two", 0o600)
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["acme-x.pem"]


def test_account_key_is_made_once_and_shared(tmp_path: Path) -> None:
    first = acme.account_key(tmp_path)
    second = acme.account_key(tmp_path)
    assert first.private_numbers() == second.private_numbers()
    key_file = tmp_path / ".acme" / "account.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(key_file.parent)) == ["account.key"]


def test_read_held_of_missing_and_garbage(tmp_path: Path) -> None:
    assert acme.read_held(tmp_path / "absent.pem") is None
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n")
    assert acme.read_held(tmp_path / "junk.pem") is None
