#!/usr/bin/env python3
"""links_check.py - every relative link in the repository's Markdown resolves.

For each *.md file git tracks: every [text](target) whose target is not a
URL (http:, https:, mailto:) must name a file or folder inside the
repository (relative to the page; ../ that leaves the repository is a
failure: a user who clones it would find a dead link), and an #anchor must
be one of the target page's headings (GitHub's slugs). Exits 1 and lists
every bad link.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def prose(path):
    """The page's lines outside code fences."""
    out, fenced = [], False
    for line in open(path, encoding="utf-8"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def anchors(path):
    return {slug(l.lstrip("#")) for l in prose(path) if l.startswith("#")}


def main():
    pages = subprocess.run(["git", "-C", ROOT, "ls-files", "*.md", "**/*.md"],
                           capture_output=True, text=True, check=True).stdout.split()
    if not pages:
        print("no Markdown pages found under", ROOT)
        return 1
    bad, seen = [], 0
    for page in sorted(set(pages)):
        path = os.path.join(ROOT, page)
        for n, line in enumerate(prose(path), 1):
            for target in LINK.findall(line):
                if re.match(r"^(https?|mailto):", target):
                    continue
                seen += 1
                file, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
                if not (dest == ROOT or dest.startswith(ROOT + os.sep)):
                    bad.append(f"{page}: {target} points outside the repository")
                elif not os.path.exists(dest):
                    bad.append(f"{page}: {target} does not exist")
                elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                    bad.append(f"{page}: {target}: no heading #{anchor}")
    for b in bad:
        print(b)
    print(f"{seen} relative links in {len(set(pages))} pages, {len(bad)} broken")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
