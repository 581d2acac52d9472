"""Every code block of README.md runs, so that the README cannot drift from the code.

- Python blocks run as scripts, each with the venv's Python in a temporary directory of its own,
  on an embedded database there.
- Shell blocks (`bash`, `sh`, `shell`, `console`) run in order in one bash with `set -e`, in a
  temporary directory, with `saascore` (and the venv's `python3`) first on the PATH. In a
  `console` block the commands are the lines after `$ ` (with their continuation lines); the
  other lines are the output shown, not checked. `127.0.0.1:8000` and `localhost:8000` become
  a free port, which `SAASCORE_PORT` names too. A command that puts a server in the background
  (`... &`) is followed by a wait until the server answers `/healthz`, as a reader waits for its
  banner. If no block starts a server, the test serves `saascore demo` on that port first.
- A curl in a shell block that gets an HTTP error (4xx, 5xx) fails its block, as a reader
  would see the error.
- A Python fragment, a snippet that uses names the README introduced before it, is marked with
  those names: `<!-- readme-test: fragment (core, org, request_id) -->`. It runs inside a
  prelude that defines exactly those names, as the README says they are: an async `main()`
  with `core` (a `Saascore` on the block's own embedded database, the default plans loaded),
  `org` (an organisation on `pro`), `org_id` (its id), `user_id` (the id of one of its users)
  and `request_id` (a fresh UUID string). `(app)` is a FastAPI app at module level instead;
  after the fragment, every GET route it added is called (an `{org_id}` in the path is filled
  in) and must answer 200. An error in the fragment names its README line.
- A shell block that needs a variable a later block sets, such as `$KEY` from the walkthrough,
  is marked `<!-- readme-test: needs ($KEY, set by the walkthrough) -->`: it runs right after
  the first shell block that sets each `$NAME` the marker names.
- A block that cannot run is marked by an HTML comment on the line before it, with the reason:
  `<!-- readme-test: skip (serves forever) -->`. A block that must fail, such as an example of
  an error, is marked `<!-- readme-test: fails (why) -->`: it runs on its own, must exit
  non-zero, and must print each output line it shows (those without `...`).

Blocks in other languages (JSON, TOML, plain text) are not code and are not run. A block in a
runnable language without a marker is never skipped; a failing block fails the test with its
line number and its output.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.runner import SAASCORE, Cli, clean_environment, free_port

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_LANGUAGES = {"python", "py"}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|fails|fragment|needs)\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
README_PORT = re.compile(r"\b(127\.0\.0\.1|localhost):8000\b")
SERVER = re.compile(r"\b(saascore\s+(serve|demo)|make\s+(demo|serve))\b")
#: The whole README's shell blocks, and each Python block, must finish within this.
TIMEOUT = 240.0


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marker: str | None  # "skip", "fails", "fragment" or "needs"
    reason: str

    @property
    def runnable(self) -> bool:
        return self.language in PYTHON_LANGUAGES | SHELL_LANGUAGES


def read_blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of `markdown`, each with the marker on the line before it."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marked = MARKER.search(previous)
        blocks.append(
            Block(
                line=index + 1,
                language=language,
                text="\n".join(lines[index + 1 : end]) + "\n",
                marker=marked.group(1) if marked else None,
                reason=marked.group(2) if marked else "",
            )
        )
        index = end + 1
    return blocks


def console_commands(block: Block) -> tuple[list[str], list[str]]:
    """A console block's commands (joined with their continuation lines) and its output lines."""
    commands: list[str] = []
    output: list[str] = []
    current: list[str] | None = None
    for line in block.text.splitlines():
        if current is not None:
            current.append(line)
        elif line.startswith("$ "):
            current = [line[2:]]
        else:
            if line.strip():
                output.append(line)
            continue
        command = "\n".join(current)
        if not command.endswith("\\") and _complete(command):
            commands.append(command)
            current = None
    if current is not None:
        commands.append("\n".join(current))
    return commands, output


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def shell_script(block: Block) -> str:
    """The block as bash, its commands each on their own, and a wait after each server started."""
    if block.language != "console":
        commands = [block.text]
    else:
        commands, _ = console_commands(block)
    script = []
    for command in commands:
        script.append(command)
        if command.rstrip().endswith("&") and SERVER.search(command):
            script.append("readme_wait_for_server")
    return "\n".join(script) + "\n"


def starts_server(block: Block) -> bool:
    return any(
        line.rstrip().endswith("&") and SERVER.search(line) for line in block.text.splitlines()
    )


NEEDED = re.compile(r"\$(\w+)")


def sets_variable(block: Block, name: str) -> bool:
    """Whether the block assigns `name` (`NAME=...` as a command, not `--opt=...`)."""
    return re.search(rf"(?:^|[\s;&|(]){re.escape(name)}=", shell_script(block), re.M) is not None


def session_order(blocks: list[Block]) -> list[Block]:
    """The shell blocks in the order the one bash session runs them: the README's, with each
    `needs` block moved right after the first block that sets each variable it names."""
    ordered = [block for block in blocks if block.marker != "needs"]
    for block in (block for block in blocks if block.marker == "needs"):
        names = NEEDED.findall(block.reason)
        assert names, f"README.md:{block.line}: a needs marker names the $VARIABLES it needs"
        position = sum(1 for other in ordered if other.line < block.line)
        for name in names:
            setter = next((i for i, b in enumerate(ordered) if sets_variable(b, name)), None)
            assert setter is not None, f"README.md:{block.line}: no shell block sets ${name}"
            position = max(position, setter + 1)
        ordered.insert(position, block)
    return ordered


#: What a fragment's marker may name, and how the prelude binds each, as the README says.
FRAGMENT_BINDINGS = {
    "core": "core = _readme_core",
    "org": "org = _readme_org",
    "org_id": "org_id = _readme_org.id",
    "user_id": (
        "user_id = (await _readme_core.users.create(_readme_org.id, email='ada@example.com')).id"
    ),
    "request_id": "request_id = str(_readme_uuid.uuid4())",
}
#: The prelude's own names start with `_readme`, so a fragment sees only the names it lists.
ASYNC_PRELUDE = """\
import asyncio as _readme_asyncio
import uuid as _readme_uuid

from saascore import Saascore as _ReadmeSaascore
from saascore import Settings as _ReadmeSettings
from saascore.plans import read_catalog as _readme_read_catalog


async def _readme_main() -> None:
    async with _ReadmeSaascore(_ReadmeSettings()) as _readme_core:
        await _readme_core.plans.load_catalog(_readme_read_catalog())
        _readme_org = await _readme_core.orgs.create(
            name="Acme", plan="pro", external_id="acme-42"
        )
"""
ASYNC_EPILOGUE = """

_readme_asyncio.run(_readme_main())
"""
APP_PRELUDE = """\
import asyncio as _readme_asyncio

import httpx as _readme_httpx
from fastapi import FastAPI as _ReadmeFastAPI
from saascore import Saascore as _ReadmeSaascore
from saascore import Settings as _ReadmeSettings
from saascore.plans import read_catalog as _readme_read_catalog


async def _readme_organization():
    async with _ReadmeSaascore(_ReadmeSettings()) as core:
        await core.plans.load_catalog(_readme_read_catalog())
        return await core.orgs.create(name="Acme", plan="pro", external_id="acme-42")


_readme_org = _readme_asyncio.run(_readme_organization())
app = _ReadmeFastAPI()
_readme_routes = len(app.routes)
"""
APP_EPILOGUE = """

async def _readme_drive():
    gets = [r for r in app.routes[_readme_routes:] if "GET" in getattr(r, "methods", ())]
    assert gets, "the fragment adds no GET route to app"
    transport = _readme_httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        _readme_httpx.AsyncClient(transport=transport, base_url="http://readme") as client,
    ):
        for route in gets:
            url = route.path.format(org_id=_readme_org.id)
            answer = await client.get(url)
            print(f"GET {url}: {answer.status_code} {answer.text}")
            assert answer.status_code == 200, f"GET {url}: not 200"


_readme_asyncio.run(_readme_drive())
"""


def fragment_names(block: Block) -> list[str]:
    inside = re.fullmatch(r"\((.*)\)", block.reason)
    names = [name.strip() for name in inside.group(1).split(",")] if inside else []
    known = {*FRAGMENT_BINDINGS, "app"}
    valid = bool(names) and set(names) <= known and ("app" not in names or names == ["app"])
    assert valid, (
        f"README.md:{block.line}: a fragment marker lists the names it uses, "
        f"from {sorted(known)} (app on its own), not {block.reason!r}"
    )
    return names


def python_script(block: Block) -> tuple[str, int]:
    """The block as a script, and the number of lines before the block's own first line."""
    if block.marker != "fragment":
        return block.text, 0
    names = fragment_names(block)
    if names == ["app"]:
        return APP_PRELUDE + block.text + APP_EPILOGUE, APP_PRELUDE.count("\n")
    prelude = ASYNC_PRELUDE + "".join(
        f"        {FRAGMENT_BINDINGS[name]}\n" for name in FRAGMENT_BINDINGS if name in names
    )
    body = textwrap.indent(block.text, " " * 8)
    return prelude + body + ASYNC_EPILOGUE, prelude.count("\n")


def readme_lines(output: str, block: Block, offset: int) -> str:
    """`output` with each traceback line of the block's own code followed by its README line."""
    length = block.text.count("\n")

    def locate(match: re.Match[str]) -> str:
        number = int(match.group(1)) - offset
        if 1 <= number <= length:
            return f"{match.group(0)} (README.md:{block.line + number})"
        return match.group(0)

    return re.sub(r'readme_block\.py", line (\d+)', locate, output)


PRELUDE = """\
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
readme_wait_for_server() {
    for _ in $(seq 600); do
        if command curl -sf "$README_BASE/healthz" > /dev/null; then return 0; fi
        sleep 0.1
    done
    echo "the server did not answer $README_BASE/healthz" >&2
    return 1
}
# An HTTP error fails the command (its body still shown), unless the block chose -f itself.
curl() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            --) break ;;
            --fail*) command curl "$@"; return ;;
            --*) ;;
            -*f*) command curl "$@"; return ;;
        esac
    done
    command curl --fail-with-body "$@"
}
"""


@dataclass(frozen=True)
class Place:
    directory: Path
    port: int
    env: dict[str, str]

    def localize(self, text: str) -> str:
        return README_PORT.sub(rf"\1:{self.port}", text)


@pytest.fixture
def place(tmp_path: Path) -> Place:
    port = free_port()
    bin_dir = str(SAASCORE.parent)
    env = {
        **clean_environment(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(SAASCORE.parent.parent),
        "SAASCORE_DATA_DIR": str(tmp_path / ".saascore"),
        "SAASCORE_PORT": str(port),
        "SAASCORE_ENVIRONMENT": "test",
        "README_BASE": f"http://127.0.0.1:{port}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return Place(tmp_path, port, env)


def run(
    args: list[str],
    place: Place,
    cwd: Path,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    try:
        done = subprocess.run(
            args,
            input=stdin,
            cwd=cwd,
            env=env if env is not None else place.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        return -1, f"{output}\n(timed out after {TIMEOUT:.0f}s)"
    return done.returncode, done.stdout


@contextmanager
def demo_unless_served(blocks: list[Block], place: Place) -> Iterator[None]:
    """`saascore demo` on the test's port, unless a block starts a server of its own."""
    if any(starts_server(block) for block in blocks):
        yield
        return
    cli = Cli(place.directory, place.env)
    with cli.server("demo", "--port", str(place.port), port=place.port) as server:
        server.wait_until_healthy()
        yield


def check_fails(block: Block, place: Place) -> None:
    code, output = run(["bash", "-c", shell_script(block)], place, place.directory)
    assert code != 0, f"README.md:{block.line}: the block should fail, but exited 0:\n{output}"
    for line in console_commands(block)[1] if block.language == "console" else []:
        if "..." not in line:
            assert line in output, f"README.md:{block.line}: {line!r} not in its output:\n{output}"


def check_python(block: Block, place: Place) -> None:
    """The block as a script (a fragment inside its prelude) on an embedded database of its own."""
    directory = place.directory / f"python-{block.line}"
    directory.mkdir()
    text, offset = python_script(block)
    script = directory / "readme_block.py"
    script.write_text(text)
    env = {**place.env, "SAASCORE_DATA_DIR": str(directory / ".saascore")}
    code, output = run([sys.executable, str(script)], place, directory, env=env)
    output = readme_lines(output, block, offset)
    assert code == 0, f"README.md:{block.line}: the Python block exited {code}:\n{output}"


def check_shell(blocks: list[Block], place: Place) -> None:
    parts = [PRELUDE]
    for block in blocks:
        parts.append(f"echo '@@ README.md:{block.line}'\n")
        parts.append(place.localize(shell_script(block)))
    script = "".join(parts)
    code, output = run(["bash", "-s"], place, place.directory, stdin=script)
    if code != 0:
        last = output.rsplit("@@ README.md:", 1)
        line, _, rest = last[-1].partition("\n") if len(last) == 2 else ("?", "", output)
        pytest.fail(f"README.md:{line}: the shell block failed (exit {code}):\n{rest}")


class TestReadBlocks:
    """The parser the README test stands on."""

    def test_blocks_markers_and_line_numbers(self) -> None:
        markdown = (
            "text\n\n<!-- readme-test: skip (serves forever) -->\n```bash\nmake demo\n```\n"
            "\n```python\nprint(1)\n```\n```json\n{}\n```\n"
        )
        blocks = read_blocks(markdown)
        assert [(b.line, b.language, b.marker, b.reason) for b in blocks] == [
            (4, "bash", "skip", "(serves forever)"),
            (8, "python", None, ""),
            (11, "json", None, ""),
        ]
        assert blocks[1].text == "print(1)\n"
        assert [b.runnable for b in blocks] == [True, True, False]

    def test_console_commands_with_continuations_and_output(self) -> None:
        block = Block(
            1,
            "console",
            "$ a=$(curl x \\\n    -d '{\"k\":\n     1}')\n$ echo hi   # note\nhi\n",
            None,
            "",
        )
        commands, output = console_commands(block)
        assert commands == ["a=$(curl x \\\n    -d '{\"k\":\n     1}')", "echo hi   # note"]
        assert output == ["hi"]

    def test_a_server_in_the_background_is_waited_for(self) -> None:
        block = Block(1, "console", "$ saascore serve &\n$ curl localhost:8000/x\n", None, "")
        assert starts_server(block)
        assert shell_script(block) == (
            "saascore serve &\nreadme_wait_for_server\ncurl localhost:8000/x\n"
        )


class TestSessionOrder:
    """A block that needs a variable runs after the block that sets it."""

    def test_a_needs_block_moves_after_the_block_that_sets_its_variable(self) -> None:
        blocks = read_blocks(
            '<!-- readme-test: needs ($KEY, from below) -->\n```bash\ncurl -H "k: $KEY"\n```\n'
            "```bash\necho first\n```\n"
            '```console\n$ KEY=$(echo sk_test)\n$ echo "$KEY"\n```\n'
            "```bash\necho last\n```\n"
        )
        assert [block.line for block in session_order(blocks)] == [5, 8, 2, 12]

    def test_a_needs_block_stays_in_place_when_set_before(self) -> None:
        blocks = read_blocks(
            "```bash\nKEY=1\n```\n```bash\necho 2\n```\n"
            "<!-- readme-test: needs ($KEY) -->\n```bash\necho $KEY\n```\n"
        )
        assert [block.line for block in session_order(blocks)] == [1, 4, 8]

    def test_an_option_is_no_assignment(self) -> None:
        blocks = read_blocks(
            "<!-- readme-test: needs ($KEY) -->\n```bash\necho $KEY\n```\n"
            "```bash\ncurl --KEY=1 x\n```\n"
        )
        with pytest.raises(AssertionError, match=r"README\.md:2: no shell block sets \$KEY"):
            session_order(blocks)


class TestFragments:
    """A fragment runs inside a prelude with exactly the names its marker lists."""

    def test_an_unknown_name_is_refused(self) -> None:
        block = Block(3, "python", "print(org)\n", "fragment", "(core, tenant)")
        with pytest.raises(AssertionError, match=r"README\.md:3: a fragment marker lists"):
            python_script(block)

    def test_only_the_listed_names_are_bound(self) -> None:
        script, offset = python_script(
            Block(3, "python", "print(request_id)\n", "fragment", "(request_id)")
        )
        bound = {line.split("=")[0].strip() for line in script.splitlines() if " = " in line}
        assert {"request_id"} <= bound
        assert not bound & {"core", "org", "org_id", "user_id", "app"}
        assert script.splitlines()[offset] == "        print(request_id)"

    @pytest.mark.slow
    def test_a_fragment_that_fails_names_its_readme_line(self, place: Place) -> None:
        # `org` is not in the marker: NameError on the fragment's second line, README line 5.
        block = Block(3, "python", "print(core.settings)\nprint(org)\n", "fragment", "(core)")
        with pytest.raises(AssertionError) as failure:
            check_python(block, place)
        message = str(failure.value)
        assert message.startswith("README.md:3: the Python block exited 1")
        assert "(README.md:5)" in message
        assert "NameError: name 'org' is not defined" in message

    @pytest.mark.slow
    def test_an_app_fragment_whose_route_fails_fails(self, place: Place) -> None:
        text = (
            "from uuid import UUID\n\n"
            "@app.get('/orgs/{org_id}')\nasync def read(org_id: UUID):\n    return 1 / 0\n"
        )
        with pytest.raises(AssertionError, match=r"README\.md:7: the Python block exited 1"):
            check_python(Block(7, "python", text, "fragment", "(app)"), place)


class NotFoundHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()
        self.wfile.write(b"answer\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


class TestCurl:
    """A curl in a shell block that gets an HTTP error fails the block."""

    @pytest.fixture
    def base(self) -> Iterator[str]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join()

    def test_an_http_error_fails_the_block(self, base: str, place: Place) -> None:
        blocks = [Block(9, "bash", f"curl -s {base}/missing\n", None, "")]
        with pytest.raises(pytest.fail.Exception, match=r"README\.md:9: .*\(exit 22\)"):
            check_shell(blocks, place)

    def test_a_success_and_an_explicit_fail_option_pass(self, base: str, place: Place) -> None:
        blocks = [Block(9, "bash", f"curl -s {base}/ok\ncurl -sf {base}/ok\n", None, "")]
        check_shell(blocks, place)


@pytest.mark.slow
def test_every_block_of_the_readme_runs(place: Place) -> None:
    blocks = read_blocks(README.read_text(encoding="utf-8"))
    for block in blocks:
        if block.marker == "skip":
            assert block.reason, f"README.md:{block.line}: a skip marker needs its reason"
        if block.marker == "fragment":
            assert block.language in PYTHON_LANGUAGES, f"README.md:{block.line}: not Python"
        if block.marker == "needs":
            assert block.language in SHELL_LANGUAGES, f"README.md:{block.line}: not a shell block"
    runnable = [b for b in blocks if b.runnable and b.marker != "skip"]
    assert runnable, "README.md has no runnable block"

    for block in runnable:
        if block.marker == "fails":
            check_fails(block, place)
        elif block.language in PYTHON_LANGUAGES:
            check_python(block, place)
    shell = [b for b in runnable if b.language in SHELL_LANGUAGES and b.marker != "fails"]
    shell = session_order(shell)
    if shell:
        with demo_unless_served(shell, place):
            check_shell(shell, place)

    skipped = sum(1 for b in blocks if b.runnable and b.marker == "skip")
    print(f"README.md: {len(runnable)} blocks ran, {skipped} skipped with a reason")


#: One `main()` as the README's first library block has it: the organisation found, or made.
IN_ORDER_PRELUDE = """\
import asyncio as _readme_asyncio
import uuid as _readme_uuid

from saascore import Saascore as _ReadmeSaascore
from saascore import Settings as _ReadmeSettings
from saascore.plans import read_catalog as _readme_read_catalog
from saascore.tenancy import OrganizationNotFound as _ReadmeOrganizationNotFound


async def _readme_main() -> None:
    async with _ReadmeSaascore(_ReadmeSettings()) as core:
        await core.plans.load_catalog(_readme_read_catalog())
        try:
            org = await core.orgs.get_by_external_id("acme-42")
        except _ReadmeOrganizationNotFound:
            org = await core.orgs.create(name="Acme", plan="pro", external_id="acme-42")
        org_id = org.id
        user_id = (
            await core.users.create(org.id, email=f"{_readme_uuid.uuid4().hex}@example.com")
        ).id
        request_id = str(_readme_uuid.uuid4())
"""


def test_the_library_fragments_run_in_order_in_one_main_twice(place: Place) -> None:
    """The README says its snippets go inside one `main()`, with the same `org`: run that way,
    in the README's order, they must agree with each other (amounts, keys, codes), and a
    second run on the same database must pass too, as the first block's does."""
    blocks = read_blocks(README.read_text(encoding="utf-8"))
    fragments = [b for b in blocks if b.marker == "fragment" and fragment_names(b) != ["app"]]
    assert len(fragments) > 5
    body = "".join(textwrap.indent(f"# README.md:{b.line}\n{b.text}", " " * 8) for b in fragments)
    script = place.directory / "in_order.py"
    script.write_text(IN_ORDER_PRELUDE + body + ASYNC_EPILOGUE)
    for attempt in ("first", "second"):
        code, output = run([sys.executable, str(script)], place, place.directory)
        assert code == 0, f"the {attempt} run in order exited {code}:\n{output}"
