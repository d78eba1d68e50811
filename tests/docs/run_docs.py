#!/usr/bin/python3
"""Runs every fenced example of README.md and docs/*.md (ctest: docs_examples).

Each fenced block must name its language. Blocks in ```cpp are compiled
against the built library and run, ```python blocks run under the
interpreter given with the built package on PYTHONPATH, and ```sh blocks
run under bash -e in a scratch folder that mirrors the source tree, with
build/release pointing at the build tree (so they cannot write into the
checkout). Other languages (cmake, text, ...) are not run, and are counted
as such in the summary.

An HTML comment on the line right before a fence changes what happens:

  <!-- docs-test: skip (why) -->  not run; the reason is required and the
                                   summary lists it
  <!-- docs-test: prelude -->      a fragment: C++ statements are put in a
                                   main() after the variables of
                                   tests/docs/prelude_main.inc (x, gamma,
                                   dy, ...; #include lines move to the top),
                                   Python code runs after
                                   tests/docs/prelude.py

Without a comment a block must be a whole program (C++: with its main).
Any other docs-test comment, or one before a block that is not run, is an
error, so that no block is left out without saying so.

Relative links, [text](path) and [text](path#anchor), must name a file of
the source tree and, for a Markdown file, a heading of it (GitHub's anchor
for the heading), or the test fails too.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FENCE = re.compile(r"^(\s*)```\s*([^\s`]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
LANGS = {"cpp": "cpp", "c++": "cpp", "python": "python", "py": "python",
         "sh": "shell", "bash": "shell", "shell": "shell"}


class Block:
    def __init__(self, path, line, lang, code, directive):
        self.path, self.line, self.lang, self.code = path, line, lang, code
        self.directive = directive

    def where(self, root):
        return f"{self.path.relative_to(root)}:{self.line}"


def parse(path):
    """The fenced blocks of a Markdown file, with the directive before each."""
    blocks, errors = [], []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, tag = m.group(1), m.group(2).lower()
        start = i
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        if j == len(lines):
            errors.append(f"{path}:{start + 1}: fence never closed")
            break
        code = "\n".join(l[len(indent):] if l.startswith(indent) else l
                         for l in lines[start + 1:j]) + "\n"
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        d = DIRECTIVE.match(lines[k]) if k >= 0 else None
        if not tag:
            errors.append(f"{path}:{start + 1}: fenced block without a language")
        blocks.append(Block(path, start + 1, tag, code, d.group(1) if d else None))
        i = j + 1
    return blocks, errors


LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")


def anchor(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    in_fence = False
    for line in path.read_text().splitlines():
        if re.match(r"^\s*```", line):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            a = anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def check_links(path, root):
    """Errors for relative links to missing files or headings."""
    errors = []
    in_fence = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^\s*```", line):
            in_fence = not in_fence
        if in_fence:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file, _, frag = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(root)}:{number}"
            if not dest.exists():
                errors.append(f"{where}: link to {target}: no such file")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                errors.append(f"{where}: link to {target}: no such heading")
    return errors


def run(cmd, cwd, env, timeout):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout, time.monotonic() - t
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout} s)", time.monotonic() - t


def cpp_source(block):
    if block.directive != "prelude":
        return block.code
    includes = [l for l in block.code.splitlines() if l.lstrip().startswith("#include")]
    body = [l for l in block.code.splitlines() if not l.lstrip().startswith("#include")]
    return ("\n".join(includes) + f'\n#include "{HERE / "prelude.hpp"}"\n'
            "int main() {\n" + (HERE / "prelude_main.inc").read_text() + "{\n" +
            "\n".join(body) + "\n}\n  return 0;\n}\n")


def python_source(block):
    if block.directive != "prelude":
        return block.code
    return (HERE / "prelude.py").read_text() + "\n# ---- the example ----\n" + block.code


def mirror(source, build, work):
    """work/: the source tree's top-level entries as links, build/release the build tree."""
    for entry in source.iterdir():
        if entry.name not in ("build", ".git"):
            (work / entry.name).symlink_to(entry)
    (work / "build").mkdir()
    (work / "build" / "release").symlink_to(build)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-dir", type=Path, required=True)
    ap.add_argument("--build-dir", type=Path, required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--cxx", default="c++")
    ap.add_argument("--cxx-flag", action="append", default=[],
                    help="a compiler flag for the C++ examples (repeatable)")
    ap.add_argument("--link", action="append", default=[],
                    help="a library or linker flag for the C++ examples (repeatable)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per example")
    ap.add_argument("--verbose", action="store_true", help="print every example's output")
    ap.add_argument("files", nargs="*", type=Path,
                    help="Markdown files (default: README.md and docs/*.md of the source dir)")
    args = ap.parse_args()
    source, build = args.source_dir.resolve(), args.build_dir.resolve()
    files = args.files or [source / "README.md", *sorted((source / "docs").glob("*.md"))]

    blocks, errors = [], []
    for f in files:
        b, e = parse(f.resolve())
        blocks += b
        errors += e
    root = source if all(f.resolve().is_relative_to(source) for f in files) else Path("/")
    for f in files:
        errors += check_links(f.resolve(), root)

    env = dict(os.environ)
    env["PYTHONPATH"] = str(build / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")

    ran, skipped, other, failed = {}, [], {}, []
    with tempfile.TemporaryDirectory(prefix="bnorm-docs-") as tmp:
        tmp = Path(tmp)
        work = tmp / "work"
        work.mkdir()
        mirror(source, build, work)
        for n, b in enumerate(blocks):
            lang = LANGS.get(b.lang)
            where = b.where(root)
            if b.directive is not None:
                if lang is None:
                    errors.append(f"{where}: docs-test comment before a ```{b.lang} block, "
                                  "which is never run")
                    continue
                m = re.fullmatch(r"skip\s*\((.+)\)", b.directive)
                if m:
                    skipped.append((where, lang, m.group(1).strip()))
                    continue
                if b.directive != "prelude" or lang == "shell":
                    errors.append(f"{where}: unknown docs-test comment {b.directive!r} "
                                  "(skip (reason), or prelude for cpp and python)")
                    continue
            if lang is None:
                other[b.lang or "(none)"] = other.get(b.lang or "(none)", 0) + 1
                continue
            if lang == "cpp":
                src = tmp / f"example{n}.cpp"
                exe = tmp / f"example{n}"
                src.write_text(cpp_source(b))
                rc, out, secs = run([args.cxx, "-std=c++20", "-O1", "-Wall", "-Wextra",
                                     "-Werror", "-I", str(source / "include"), *args.cxx_flag,
                                     str(src), "-o", str(exe), *args.link],
                                    tmp, env, args.timeout)
                if rc == 0:
                    rc, out2, secs2 = run([str(exe)], work, env, args.timeout)
                    out, secs = out + out2, secs + secs2
            elif lang == "python":
                src = tmp / f"example{n}.py"
                src.write_text(python_source(b))
                rc, out, secs = run([args.python, str(src)], work, env, args.timeout)
            else:
                src = tmp / f"example{n}.sh"
                src.write_text(b.code)
                rc, out, secs = run(["bash", "-e", "-o", "pipefail", str(src)], work, env,
                                    args.timeout)
            ran[lang] = ran.get(lang, 0) + 1
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            print(f"{where}: {lang:6} {secs:6.1f} s  {status}", flush=True)
            if rc == 0 and args.verbose:
                print("    " + "\n    ".join(out.rstrip().splitlines()), flush=True)
            if rc != 0:
                failed.append(where)
                print("    " + "\n    ".join(b.code.rstrip().splitlines()))
                print("  output:\n    " + "\n    ".join(out.rstrip().splitlines()[-40:]),
                      flush=True)

    print()
    print(f"examples run: {sum(ran.values())} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(ran.items())) + f"), failed: {len(failed)}")
    print(f"examples skipped: {len(skipped)}")
    for where, lang, why in skipped:
        print(f"  {where} ({lang}): {why}")
    if other:
        print("blocks not run (not C++, Python or shell): "
              + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    for e in errors:
        print(f"error: {e}")
    for f in failed:
        print(f"failed: {f}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
