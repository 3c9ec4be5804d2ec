"""The template renderer: ``{column}``, ``{env.NAME}``, ``{{``/``}}`` and nothing else."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.errors import TemplateError
from fetcher.models import REDACTED
from fetcher.templates import compile_template

ENV = {"API_TOKEN": "s3cret", "EMPTY": ""}


def render(source: str, row: dict[str, str] | None = None, env: dict[str, str] = ENV) -> str:
    return compile_template(source).render(row or {}, env).text


def test_columns_and_env_are_filled_in_order() -> None:
    rendered = compile_template("https://x/{id}/{name}?t={env.API_TOKEN}").render(
        {"id": "7", "name": "seven"}, ENV
    )
    assert rendered.text == "https://x/7/seven?t=s3cret"
    assert rendered.safe == f"https://x/7/seven?t={REDACTED}"
    assert rendered.secret


def test_a_template_names_the_columns_and_env_vars_it_reads() -> None:
    template = compile_template("{a}-{b}-{env.HOME}-{a}")
    assert template.columns == {"a", "b"}
    assert template.env_names == {"HOME"}
    assert not template.is_literal
    assert compile_template("plain {{text}}").is_literal


def test_doubled_braces_are_literal_braces() -> None:
    assert render("{{id}}") == "{id}"
    assert render("{{{id}}}", {"id": "7"}) == "{7}"
    assert render("a}}b{{c") == "a}b{c"


def test_a_value_containing_braces_is_never_rendered_again() -> None:
    row = {"a": "{b}", "b": "SHOULD-NOT-APPEAR", "c": "{env.API_TOKEN}"}
    rendered = compile_template("{a}|{c}").render(row, ENV)
    assert rendered.text == rendered.safe == "{b}|{env.API_TOKEN}"
    assert not rendered.secret


@pytest.mark.parametrize(
    "source",
    [
        "{id.__class__}",
        "{id[0]}",
        "{id:>10}",
        "{id!r}",
        "{__import__('os')}",
        "{0}",
        "{ id }",
    ],
)
def test_nothing_but_a_plain_name_lookup_happens(source: str) -> None:
    # Each of these would do something under str.format; here each is just a name that
    # is not a column, so rendering fails cleanly instead of evaluating anything.
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render(source, {"id": "abc"})


def test_a_column_with_an_odd_name_is_still_only_looked_up() -> None:
    assert render("{a.b}|{c[0]}", {"a.b": "dot", "c[0]": "idx"}) == "dot|idx"


def test_unknown_placeholder_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"unknown placeholder \{nope\}"):
        render("x/{nope}", {"id": "1"})


def test_missing_environment_variable_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="environment variable NOPE is not set"):
        render("{env.NOPE}")


def test_an_empty_env_value_renders_and_is_shown_redacted() -> None:
    # Shown as any other: a reader cannot tell that the variable was empty.
    rendered = compile_template("a{env.EMPTY}b").render({}, ENV)
    assert rendered.text == "ab"
    assert rendered.safe == f"a{REDACTED}b"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{", "unmatched '{'"),
        ("}", "unmatched '}'"),
        ("a{b", "unmatched '{'"),
        ("a}b", "unmatched '}'"),
        ("{}", "empty placeholder"),
        ("{  }", "empty placeholder"),
        ("{env.}", "bad environment variable name"),
        ("{env.1X}", "bad environment variable name"),
        ("{env.A-B}", "bad environment variable name"),
        ("{env.A.B}", "bad environment variable name"),
    ],
)
def test_malformed_templates_are_rejected_when_compiled(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_template(source)


def test_env_lookups_see_only_the_mapping_given() -> None:
    # A real variable that exists (PATH-style) is found in the env passed in, and only there.
    assert render("{env.PATH}", env={"PATH": "/bin"}) == "/bin"
    with pytest.raises(TemplateError):
        render("{env.PATH}", env={})


# --------------------------------------------------------------------------- properties

_names = st.text(string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=8).filter(
    lambda s: s.strip() != ""
)
_literals = st.text(st.characters(exclude_characters="{}", exclude_categories=["Cs"]), max_size=12)


class _Recording(dict[str, str]):
    """A row that records every name looked up in it."""

    def __init__(self, data: dict[str, str]) -> None:
        super().__init__(data)
        self.looked_up: set[str] = set()

    def get(self, key: str, default: object = None) -> str | None:  # type: ignore[override]
        self.looked_up.add(key)
        return super().get(key)

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        return super().__getitem__(key)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            _literals.map(lambda s: ("lit", s)),
            _names.map(lambda s: ("col", s)),
            st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True).map(lambda s: ("env", s)),
        ),
        max_size=8,
    ),
    st.text(max_size=10),
)
def test_a_template_that_renders_reads_only_the_names_it_contains(
    parts: list[tuple[str, str]], value: str
) -> None:
    source = "".join(
        text if kind == "lit" else f"{{{text}}}" if kind == "col" else f"{{env.{text}}}"
        for kind, text in parts
    )
    columns = {text for kind, text in parts if kind == "col" and not text.startswith("env.")}
    env_names = {text for kind, text in parts if kind == "env"}
    env_names |= {text[4:] for kind, text in parts if kind == "col" and text.startswith("env.")}
    try:
        template = compile_template(source)
    except TemplateError:
        return  # e.g. {env.x-y}: a bad env name is refused before anything is read
    row = _Recording({name: value for name in columns} | {"unrelated": "U"})
    env = _Recording({name: value for name in env_names} | {"UNRELATED": "U"})
    rendered = template.render(row, env)
    assert row.looked_up <= columns
    assert env.looked_up <= env_names
    assert template.columns == columns
    assert template.env_names == env_names
    expected = "".join(
        text if kind == "lit" else value for kind, text in parts
    )  # every placeholder holds the same value here
    assert rendered.text == expected
    shown = "".join(
        text if kind == "lit" else REDACTED if kind == "env" or text.startswith("env.") else value
        for kind, text in parts
    )  # each value taken from the environment, and it only, reads <redacted>
    assert rendered.safe == shown


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("{}ab.:!_[]0 env\x00\n\\"), max_size=30) | st.text(),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4),
)
def test_any_input_renders_or_raises_template_error(source: str, row: dict[str, str]) -> None:
    try:
        rendered = compile_template(source).render(row, {"env": "e", "A": "a"})
    except TemplateError:
        return
    assert isinstance(rendered.text, str)
    # Whatever rendered, no placeholder syntax is left unexplained: the output is the
    # literal text plus row or env values, never an evaluation of the source.
    if "{" not in source and "}" not in source:
        assert rendered.text == source


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_doubling_every_brace_makes_any_text_literal(text: str) -> None:
    escaped = text.replace("{", "{{").replace("}", "}}")
    template = compile_template(escaped)
    assert template.is_literal
    assert template.render({}, {}).text == text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # The userinfo ends at the last "@" of the literal authority; values cannot move it.
        ("http://{user}:{env.PW}@{host}/p?q={q}", "http://a%40b:p%40ss%2Fw:rd%3F%23%25@h/p?q=@/"),
        ("http://u:{env.PW}@h/{user}", "http://u:p%40ss%2Fw:rd%3F%23%25@h/a@b"),
        ("http://{env.CREDS}@h/", "http://ann:pw@h/"),  # ":" parts user and password
        # No userinfo of the template's own: every value goes in as it is.
        ("{base}/x", "http://u:p@h/x"),
        ("http://h/{user}@{q}", "http://h/a@b@@/"),
        ("http://{host}/a@b", "http://h/a@b"),
    ],
)
def test_a_value_in_a_url_userinfo_is_percent_encoded(source: str, expected: str) -> None:
    template = compile_template(source)
    row = {"user": "a@b", "host": "h", "q": "@/", "base": "http://u:p@h"}
    env = {"PW": "p@ss/w:rd?#%", "CREDS": "ann:pw"}
    rendered = template.render(row, env, quoted=template.userinfo())
    assert rendered.text == expected
    assert "p@ss" not in rendered.safe
