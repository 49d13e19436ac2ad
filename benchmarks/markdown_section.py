"""A generated section of a Markdown page: the text between `<!-- name:begin -->` and
`<!-- name:end -->`, replaced in place, or appended (under `heading`) the first time."""

from pathlib import Path
from typing import Optional

from ctr.atomic import write_atomic


def replace_section(page_path: Path, name: str, text: str, heading: Optional[str] = None) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    page = page_path.read_text() if page_path.exists() else ""
    if begin in page:
        head, rest = page.split(begin, 1)
        page = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        title = f"{heading}\n\n" if heading else ""
        page = page.rstrip("\n") + f"\n\n{title}{begin}\n{text}\n{end}\n"
    write_atomic(page_path, lambda f: f.write(page.encode()))
