"""ingress.config.users: the SOCKS5 users file, its scrypt hashes and the Authenticator."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.config import users
from ingress.config.users import (
    Authenticator,
    UsersFileError,
    hash_password,
    load_users,
    parse_users,
    verify_password,
)

MAKE_ONE = "make one with `mta-ingress hash-password`"


def quick(password: bytes) -> str:
    """A hash at the cheapest parameters accepted, so the tests stay fast."""
    return hash_password(password, log2_n=10, r=1, p=1)


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts hashlib.scrypt's runs, as the module makes them."""
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("ingress.config.users.hashlib.scrypt", counting)
    return calls


# --- hashes --------------------------------------------------------------------------------------


def test_hash_format_and_defaults() -> None:
    stored = hash_password(b"correct horse")
    name, log2_n, r, p, salt, key = stored.split("$")
    assert (name, log2_n, r, p) == ("scrypt", "15", "8", "1")
    assert "=" not in stored
    assert (len(unb64(salt)), len(unb64(key))) == (16, 32)
    assert verify_password(stored, b"correct horse")
    assert hash_password(b"correct horse") != stored  # a fresh salt each time


def test_hash_then_verify() -> None:
    stored = quick(b"s3cret")
    assert verify_password(stored, b"s3cret")
    assert not verify_password(stored, b"s3cres")
    assert not verify_password(stored, b"")
    assert not verify_password(stored, b"s3cret\n")


def test_a_one_byte_change_of_the_stored_key_fails() -> None:
    stored = quick(b"s3cret")
    head, key = stored.rsplit("$", 1)
    raw = bytearray(unb64(key))
    raw[0] ^= 1
    assert not verify_password(f"{head}${b64(bytes(raw))}", b"s3cret")


def test_a_key_of_another_length_is_compared_at_its_length() -> None:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=1024, r=1, p=1, dklen=64)
    assert verify_password(f"scrypt$10$1$1${b64(salt)}${b64(key)}", b"pw")


@pytest.mark.parametrize("stored", [
    "", "hunter2", "scrypt$", "scrypt$10$1$1$c2FsdHNhbHQ", "$2y$10$abcdefghijklmnopqrstuv",
    "scrypt$9$1$1$c2FsdHNhbHQ$" + "A" * 43,       # log2 N below 10
    "scrypt$21$1$1$c2FsdHNhbHQ$" + "A" * 43,      # log2 N above 20
    "scrypt$10$33$1$c2FsdHNhbHQ$" + "A" * 43,     # r above 32
    "scrypt$10$1$17$c2FsdHNhbHQ$" + "A" * 43,     # p above 16
    "scrypt$20$16$1$c2FsdHNhbHQ$" + "A" * 43,     # 2 GiB
    "scrypt$010$1$1$c2FsdHNhbHQ$" + "A" * 43,     # a leading zero
    "scrypt$10$1$1$c2FsdA$" + "A" * 43,           # a 4-byte salt
    "scrypt$10$1$1$c2FsdHNhbHQ$" + "A" * 20,      # a 15-byte key
    "scrypt$10$1$1$c2FsdHNhbHQ$" + "A" * 87,      # 65 bytes
    "scrypt$10$1$1$c2FsdHNhbHQ=$" + "A" * 43,     # padding
    "scrypt$10$1$1$c2FsdHNhbHR$" + "A" * 43,      # unused bits set: not canonical
    "scrypt$10$1$1$c2Fsd-NhbHQ$" + "A" * 43,      # urlsafe alphabet
    "scrypt$\u0661\u0660$1$1$c2FsdHNhbHQ$" + "A" * 43,  # Arabic-Indic digits
])
def test_a_malformed_stored_hash_verifies_nothing(stored: str) -> None:
    assert not verify_password(stored, b"hunter2")


@pytest.mark.parametrize(("log2_n", "r", "p"), [(9, 1, 1), (21, 1, 1), (10, 0, 1), (10, 33, 1),
                                                (10, 1, 0), (10, 1, 17), (20, 16, 1)])
def test_hash_password_makes_no_hash_it_would_refuse(log2_n: int, r: int, p: int) -> None:
    with pytest.raises(ValueError, match=r"must be from|more than 1 GiB"):
        hash_password(b"pw", log2_n=log2_n, r=r, p=p)


def hmac_key(password: bytes) -> bytes:
    """The key HMAC-SHA256 (scrypt's PBKDF2) makes of a password: hashed past its 64-byte
    block, and zero-padded, so trailing NULs do not count."""
    return (hashlib.sha256(password).digest() if len(password) > 64 else password).rstrip(b"\0")


def test_passwords_the_same_hmac_key_makes_are_one_to_scrypt() -> None:
    # A property of scrypt itself (RFC 7914 runs PBKDF2-HMAC-SHA256 over the password), kept:
    # finding "pw\0" needs "pw" already.
    stored = quick(b"pw")
    assert verify_password(stored, b"pw\0")
    long = b"x" * 65
    assert verify_password(quick(long), hashlib.sha256(long).digest())


@settings(max_examples=20, deadline=None)
@given(password=st.binary(min_size=1, max_size=255), other=st.binary(max_size=255))
def test_round_trip(password: bytes, other: bytes) -> None:
    stored = quick(password)
    assert verify_password(stored, password)
    assert not verify_password(stored, password + b"!")
    assert verify_password(stored, other) == (hmac_key(other) == hmac_key(password))


# --- the users file ------------------------------------------------------------------------------


def test_parse_users_skips_comments_and_blank_lines() -> None:
    alice, bob = quick(b"a"), quick(b"b")
    text = (f"# egress users\n\n   \n  alice:{alice}  \r\n\t# bob below\n"
            f"bob : {bob}\nj\u00fcrgen:{alice}")
    assert parse_users(text, "users") == {b"alice": alice, b"bob": bob,
                                          "j\u00fcrgen".encode(): alice}


def test_parse_users_of_nothing() -> None:
    assert parse_users("", "users") == {}
    assert parse_users("# nobody yet\n", "users") == {}


def test_every_malformed_line_in_one_error() -> None:
    good = quick(b"pw")
    text = "\n".join([
        f"alice:{good}",                     # 1
        "just-a-password",                   # 2
        f":{good}",                          # 3
        "bob:",                              # 4
        "carol:scrypt$9$1$1$c2FsdHNhbHQ$" + "A" * 43,  # 5
        "#comment",                          # 6
        f"{'x' * 256}:{good}",               # 7
        "dave:scrypt$10$1$1$c2FsdA$" + "A" * 43,       # 8
        f"alice:{good}",                     # 9
        "erin:scrypt$10$1$1$$",              # 10
    ])
    with pytest.raises(UsersFileError) as caught:
        parse_users(text, "/etc/mta-ingress/egress-users")
    where = "/etc/mta-ingress/egress-users"
    assert caught.value.problems == [
        f"{where}:2: not user:hash (no ':'); {MAKE_ONE} --user NAME",
        f"{where}:3: empty user name",
        f"{where}:4: the hash of user 'bob' is not a scrypt$ hash; {MAKE_ONE}",
        f"{where}:5: the hash of user 'carol' is refused: log2 N must be from 10 to 20, not 9; "
        f"{MAKE_ONE}",
        f"{where}:7: the user name has 256 bytes; RFC 1929 carries at most 255",
        f"{where}:8: the hash of user 'dave' has a salt of 4 bytes; at least 8 are needed; "
        f"{MAKE_ONE}",
        f"{where}:9: user 'alice' is listed twice (first on line 1)",
        f"{where}:10: the hash of user 'erin' is not a scrypt$ hash "
        f"(scrypt$log2N$r$p$salt$key); {MAKE_ONE}",
    ]
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("line", ["alice:hunter2", "alice:scrypt$hunter2", "alice: hunter2 ",
                                  "alice:pass:wort", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="])
def test_a_plain_text_password_is_refused_and_not_repeated(line: str) -> None:
    with pytest.raises(UsersFileError) as caught:
        parse_users(f"# users\n{line}\n", "users")
    (problem,) = caught.value.problems
    assert problem.startswith("users:2: the hash of user 'alice' is not a scrypt$ hash")
    assert problem.endswith(MAKE_ONE)
    assert "hunter" not in problem
    assert "wort" not in problem
    assert "W6ph" not in problem


def test_a_duplicate_is_reported_even_when_its_first_hash_is_bad() -> None:
    with pytest.raises(UsersFileError) as caught:
        parse_users(f"alice:plain\nalice:{quick(b'pw')}\n", "users")
    assert caught.value.problems == [
        f"users:1: the hash of user 'alice' is not a scrypt$ hash; {MAKE_ONE}",
        "users:2: user 'alice' is listed twice (first on line 1)",
    ]


def test_user_name_lengths_count_bytes() -> None:
    stored = quick(b"pw")
    assert list(parse_users(f"{'x' * 255}:{stored}", "users")) == [b"x" * 255]
    # 128 two-byte characters: 256 bytes, though 128 characters
    with pytest.raises(UsersFileError, match=r"users:1: the user name has 256 bytes"):
        parse_users(f"{chr(0xE9) * 128}:{stored}", "users")


def test_line_numbers_count_only_line_feeds() -> None:
    with pytest.raises(UsersFileError) as caught:
        parse_users("# a\x0cform feed and a \u2028 separator\nbroken\n", "users")
    assert caught.value.problems[0].startswith("users:2: ")


def test_load_users(write: Callable[..., Path]) -> None:
    stored = quick(b"pw")
    path = write(f"alice:{stored}\n", "egress-users")
    assert load_users(str(path)) == {b"alice": stored}


def test_load_users_problems_name_the_path(write: Callable[..., Path]) -> None:
    path = write("alice\n", "egress-users")
    with pytest.raises(UsersFileError) as caught:
        load_users(str(path))
    assert caught.value.problems == [f"{path}:1: not user:hash (no ':'); {MAKE_ONE} --user NAME"]


def test_load_users_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(UsersFileError) as caught:
        load_users(str(path))
    assert caught.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_load_users_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1"
    path.write_bytes(b"j\xfcrgen:x\n")
    with pytest.raises(UsersFileError) as caught:
        load_users(str(path))
    assert caught.value.problems == [f"{path}: not UTF-8 (byte 1)"]


@pytest.mark.parametrize(("name", "problem"), [
    ("", "empty user name"),
    (" alice", "a user name cannot start or end with white space"),
    ("alice\n", "a user name cannot start or end with white space"),
    ("#alice", "a user name cannot start with '#' (the line would be a comment)"),
    ("al:ice", "a user name cannot hold ':' (it ends the name)"),
    ("al\nice", "a user name cannot hold a line break"),
    ("x" * 256, "the user name has 256 bytes; RFC 1929 carries at most 255"),
    ("al\udcffice", "the user name is not UTF-8"),
])
def test_user_name_problem(name: str, problem: str) -> None:
    assert users.user_name_problem(name) == problem


def test_user_name_problem_accepts() -> None:
    assert users.user_name_problem("alice") is None
    assert users.user_name_problem("a b\x00c") is None  # RFC 1929 allows any octet


# --- the Authenticator ---------------------------------------------------------------------------


@pytest.fixture
def table() -> dict[bytes, str]:
    return {b"alice": quick(b"alice-pw"), b"bob": quick(b"bob-pw")}


def test_authenticator_good_bad_and_unknown(table: dict[bytes, str]) -> None:
    auth = Authenticator(table)
    assert auth.check(b"alice", b"alice-pw")
    assert auth.check(b"bob", b"bob-pw")
    assert not auth.check(b"alice", b"bob-pw")
    assert not auth.check(b"alice", b"")
    assert not auth.check(b"mallory", b"alice-pw")
    assert not auth.check(b"", b"")
    assert dict(auth.users) == table


def test_the_users_table_is_read_only(table: dict[bytes, str]) -> None:
    auth = Authenticator(table)
    with pytest.raises(TypeError):
        auth.users[b"mallory"] = quick(b"x")  # type: ignore[index]
    table[b"mallory"] = quick(b"x")  # the caller's dict was copied
    assert b"mallory" not in auth.users


def test_an_unknown_user_costs_one_scrypt_as_a_known_one_does(
        table: dict[bytes, str], scrypt_calls: list[int]) -> None:
    auth = Authenticator(table)
    assert len(scrypt_calls) == 1  # the dummy hash
    assert not auth.check(b"mallory", b"pw")
    assert len(scrypt_calls) == 2
    assert not auth.check(b"alice", b"wrong")
    assert len(scrypt_calls) == 3


def test_the_dummy_hash_takes_the_users_parameters(
        table: dict[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = hashlib.scrypt

    def recording(password: bytes, **kwargs: Any) -> bytes:
        seen.append(kwargs["n"])
        return real(password, **kwargs)

    table[b"carol"] = hash_password(b"c", log2_n=11, r=1, p=1)
    monkeypatch.setattr("ingress.config.users.hashlib.scrypt", recording)
    auth = Authenticator(table)
    assert not auth.check(b"mallory", b"pw")
    assert seen == [1024, 1024]  # alice's and bob's log2 N = 10 is the most common
    seen.clear()
    Authenticator({})
    assert seen == [1 << 15]  # no users: the defaults


def test_a_good_check_is_cached(table: dict[bytes, str], scrypt_calls: list[int]) -> None:
    auth = Authenticator(table)
    assert auth.check(b"alice", b"alice-pw")
    assert len(scrypt_calls) == 2
    for _ in range(5):
        assert auth.check(b"alice", b"alice-pw")
    assert len(scrypt_calls) == 2
    # the cached success is for those credentials only
    assert not auth.check(b"alice", b"alice-pw2")
    assert not auth.check(b"bob", b"alice-pw")
    assert len(scrypt_calls) == 4


def test_failures_are_never_cached(table: dict[bytes, str], scrypt_calls: list[int]) -> None:
    auth = Authenticator(table)
    for _ in range(3):
        assert not auth.check(b"alice", b"wrong")
        assert not auth.check(b"mallory", b"wrong")
    assert len(scrypt_calls) == 1 + 6


def test_the_cache_holds_no_password(table: dict[bytes, str]) -> None:
    auth = Authenticator(table)
    assert auth.check(b"alice", b"alice-pw")
    (tag,) = auth._verified
    assert len(tag) == 32
    assert b"alice-pw" not in tag
    assert tag != hashlib.sha256(b"alice\0alice-pw").digest()
    assert tag != Authenticator(table)._tag(b"alice", b"alice-pw")  # a key per instance


def test_the_cache_key_cannot_be_shifted_across_the_separator(
        scrypt_calls: list[int]) -> None:
    auth = Authenticator({b"a": quick(b"b\0c"), b"a\0b": quick(b"other")})
    assert auth.check(b"a", b"b\0c")
    assert not auth.check(b"a\0b", b"c")


def test_the_cache_is_bounded_and_drops_the_least_recently_used(
        scrypt_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Authenticator, "CACHE_SIZE", 2)
    auth = Authenticator({b"a": quick(b"1"), b"b": quick(b"2"), b"c": quick(b"3")})
    start = len(scrypt_calls)
    assert auth.check(b"a", b"1")
    assert auth.check(b"b", b"2")
    assert auth.check(b"a", b"1")  # a hit: now b is the oldest
    assert auth.check(b"c", b"3")  # drops b
    assert len(scrypt_calls) == start + 3
    assert len(auth._verified) == 2
    assert auth.check(b"a", b"1")
    assert len(scrypt_calls) == start + 3
    assert auth.check(b"b", b"2")
    assert len(scrypt_calls) == start + 4


def test_replace_swaps_the_table_and_clears_the_cache(
        table: dict[bytes, str], scrypt_calls: list[int]) -> None:
    auth = Authenticator(table)
    assert auth.check(b"alice", b"alice-pw")
    assert auth.check(b"bob", b"bob-pw")
    renewed = {b"alice": quick(b"new-pw")}
    auth.replace(renewed)
    assert dict(auth.users) == renewed
    assert not auth.check(b"alice", b"alice-pw")  # no cached success survives
    assert not auth.check(b"bob", b"bob-pw")
    assert auth.check(b"alice", b"new-pw")
    before = len(scrypt_calls)
    assert auth.check(b"alice", b"new-pw")
    assert len(scrypt_calls) == before


def test_a_check_begun_before_replace_caches_nothing(table: dict[bytes, str]) -> None:
    auth = Authenticator(table)
    real = users.verify_password

    def replace_meanwhile(stored: str, password: bytes) -> bool:
        auth.replace({})
        return real(stored, password)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(users, "verify_password", replace_meanwhile)
        assert auth.check(b"alice", b"alice-pw")  # the answer of the table it began with
    assert len(auth._verified) == 0
    assert not auth.check(b"alice", b"alice-pw")
