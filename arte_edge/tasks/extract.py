"""Pull final answers out of free-form completions the way small models actually write them.

Priority for the final answer text: the last ``Answer:`` line (also ``**Answer:**``, ``Final answer:``,
answer on the following line), then the last ``\\boxed{...}``, then the last "the answer is ...".
"""

from __future__ import annotations

import math
import re

_ANSWER_LINE = re.compile(r"\b(?:final\s+)?answer\s*[:：]\s*(.*)$", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\b(?:answer|option|choice)\s+is\s*[:：]?\s*([^\n]+)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKDOWN = re.compile(r"\*\*|__|`")


def _strip_markdown(text: str) -> str:
    return _MARKDOWN.sub("", text).strip()


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _clean_answer_text(text: str) -> str:
    text = _strip_markdown(text)
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.strip().strip("$").strip()
    return text.rstrip(".").strip()


def _answer_line(completion: str) -> str | None:
    lines = completion.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _ANSWER_LINE.search(_strip_markdown(lines[i]).lstrip("#>-* "))
        if match is None:
            continue
        content = match.group(1).strip()
        if not content.strip("*$ "):
            # "Answer:" alone on its line: the answer is on the next non-empty line.
            following = [line for line in lines[i + 1:] if line.strip()]
            content = following[0] if following else ""
        return content
    return None


def final_answer_text(completion: str) -> str | None:
    """The raw final answer a completion gives (markdown, ``$`` and trailing period removed), or None."""
    for found in (_answer_line(completion), last_boxed(completion)):
        if found is not None and _clean_answer_text(found):
            return _clean_answer_text(found)
    matches = _ANSWER_IS.findall(completion)
    if matches:
        cleaned = _clean_answer_text(matches[-1])
        return cleaned or None
    return None


# ---------------------------------------------------------------- multiple choice

def extract_choice(text: str, letters: str) -> str | None:
    """The choice letter in an answer text ("B", "(B)", "B) text", "option B", "\\boxed{B}"), or None."""
    text = _clean_answer_text(text)
    valid = f"[{re.escape(letters)}]"
    lower = f"[{re.escape(letters.lower())}]"
    patterns = (
        # "B", "B.", "B)", "(B) text", "B: text", "B - text"; not "A planet" (an article).
        rf"^[\(\[]?({valid})(?:[\)\]]|(?=$|[.:,;]|\s+[-–—]))",
        rf"\b(?:option|choice|answer)\s*(?:is\s*)?[:\s]\s*[\(\[]?({valid})\b",
        rf"^[\(\[]?({lower})(?:[\)\]]|(?=$|[.:]))",
        rf"\(({valid})\)",
    )
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return match.group(1).upper()
    # A lone capital letter somewhere ("I pick B"), unless used as an article ("A planet").
    found = {m.group(1) for m in re.finditer(rf"\b({valid})\b(?!\s+[a-z])", text)}
    return found.pop() if len(found) == 1 else None


def _norm_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def match_choice_text(text: str, choices: list[str], letters: str) -> str | None:
    """The letter of the choice whose text the answer spells out ("Answer: Mercury"), or None."""
    answer = _norm_text(_clean_answer_text(text))
    if not answer:
        return None
    normed = [_norm_text(c) for c in choices]
    exact = [i for i, c in enumerate(normed) if c and c == answer]
    if len(exact) == 1:
        return letters[exact[0]]
    contained = [i for i, c in enumerate(normed) if c and re.search(rf"\b{re.escape(c)}\b", answer)]
    return letters[contained[0]] if len(contained) == 1 else None


# ---------------------------------------------------------------- numbers

_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+"
_NUMBER_TOKEN = re.compile(
    rf"(?P<mixed>(?<![\d.])\d+)\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)(?![\d.])"
    rf"|(?P<num>{_NUMBER})\s*/\s*(?P<den>{_NUMBER})"
    rf"|(?P<single>{_NUMBER})"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def parse_number(text: str) -> float | None:
    """The number an answer text states: "$1,234.50", "72 apples", "3/4", "\\frac{3}{4}", "50%", "x = 7"."""
    text = _clean_answer_text(text)
    text = text.replace("−", "-").replace("\\$", "").replace("{,}", ",").replace("\\!", "")
    text = _FRAC.sub(r"(\1)/(\2)", text).replace("(", " ").replace(")", " ")
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    match = _NUMBER_TOKEN.search(text)
    if match is None:
        return None
    try:
        if match.group("mixed"):
            return _to_float(match.group("mixed")) + _to_float(match.group("mnum")) / _to_float(
                match.group("mden"))
        if match.group("num"):
            den = _to_float(match.group("den"))
            return _to_float(match.group("num")) / den if den else None
        return _to_float(match.group("single"))
    except (ValueError, OverflowError):
        return None


def format_number(value: float) -> str:
    """Canonical string of a number: "72" for 72.0, else up to 10 significant digits."""
    if math.isfinite(value) and abs(value) < 1e15 and abs(value - round(value)) < 1e-9:
        return str(round(value))
    return f"{value:.10g}"


def numbers_match(predicted: float, gold: float, *, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """Whether two numbers are equal up to a small tolerance."""
    return math.isclose(predicted, gold, rel_tol=rel_tol, abs_tol=abs_tol)


# ---------------------------------------------------------------- LaTeX math answers (MATH-500)

_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def normalize_math(text: str) -> str:
    """A canonical form of a LaTeX answer for string comparison (spacing, \\left/\\right, dfrac, units)."""
    text = _clean_answer_text(text)
    text = _TEXT_CMD.sub(r"\1", text)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                     ("\\displaystyle", ""), ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""),
                     ("^{\\circ}", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", "")):
        text = text.replace(old, new)
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", text)
    text = "".join(text.split())
    # "x=5" -> "5" (a single-variable left-hand side is not part of the answer).
    text = re.sub(r"^[a-zA-Z]=", "", text)
    return text.rstrip(".")


def _plain_number(text: str) -> float | None:
    """A number only when the whole normalised answer is one (so "(3,4)" is not read as 3)."""
    body = re.sub(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", r"\1/\2", text)
    if re.fullmatch(rf"(?:{_NUMBER})(?:/(?:{_NUMBER}))?", body):
        return parse_number(body)
    return None


def math_answers_match(predicted: str, gold: str) -> bool:
    """Whether two LaTeX answers agree: as numbers when both are plain numbers, else as normalised text."""
    pred, ref = normalize_math(predicted), normalize_math(gold)
    if pred == ref:
        return True
    pred_num, ref_num = _plain_number(pred), _plain_number(ref)
    if pred_num is not None and ref_num is not None:
        return numbers_match(pred_num, ref_num)
    return False


# ---------------------------------------------------------------- code

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The last ```python fenced block (else the last fenced block, else the whole completion).

    An unclosed fence (a generation cut off by the token limit) counts up to the end of the text.
    Returns None for an empty completion.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(completion)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    chosen = python[-1] if python else (blocks[-1][1] if blocks else completion)
    # Keep the first line's indentation: a HumanEval body-only completion starts indented.
    lines = chosen.rstrip().splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    code = "\n".join(lines)
    return code if code.strip() else None
