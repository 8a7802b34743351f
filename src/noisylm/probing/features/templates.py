"""Prompt templates that turn a text dataset's records into the strings a backbone reads.

The prompts of the paper's Table 11 (App. E.1.2) by dataset name (`sst-2`, `sst-fine`, `20newsgroup`,
`cr`, `bbc`, `balanced-copa`, `mrpc`, `wic`), one for the bundled WordNet task (`wordnet`), or any
string with `{field}` placeholders for the dataset's text fields.
"""

from __future__ import annotations

import re
import string

from noisylm.errors import UsageError
from noisylm.probing.datasets import LabelledDataset

# Table 11 of the paper (App. E.1.2), keyed by dataset name; plus one for the bundled WordNet task.
TEMPLATES: dict[str, str] = {
    "sst-2": "{text} this movie is",
    "sst-fine": "{text} this movie is",
    "20newsgroup": "{text} This article is about",
    "cr": "{text} the sentiment is",
    "bbc": "Please classify the topic of the following news: {text} Answer:",
    "balanced-copa": (
        "Given the premise: {premise} Find the most plausible alternative for the {question}. "
        "Option 1: {choice1} Option 2: {choice2} Which option is more plausible?"
    ),
    "mrpc": "Sentence 1: {text1} Sentence 2: {text2} Is this a paraphrase?",
    "wic": (
        "Task: Determine if the word {phrase1} has the same meaning in the two sentences below. "
        "Sentence 1: {sentence1} Sentence 2: {sentence2} Your answer:"
    ),
    "wordnet": "{word}: {text}. This word is a kind of",
}


def _template_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    aliases = {"sst2": "sst-2", "sstfine": "sst-fine", "sst5": "sst-fine", "20newsgroups": "20newsgroup",
               "balancedcopa": "balanced-copa", "copa": "balanced-copa"}  # fmt: skip
    return aliases.get(key, key)


def template_fields(template: str) -> list[str]:
    """The `{field}` names a template uses."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise UsageError(
            f"bad template {template!r} ({exc}); write fields as {{text}}, braces as {{{{ }}}}"
        ) from None


def resolve_template(template: str | None, dataset: LabelledDataset) -> tuple[str | None, str | None]:
    """(name, template string) for a dataset: a Table 11 name, a user string with {fields}, or the default.

    The default is the Table 11 prompt when the dataset is named like one of the paper's, otherwise
    the bare text field (`{text}`) for single-field datasets. Image and vector datasets take no template.
    """
    if dataset.kind != "text":
        if template is not None:
            raise UsageError(f"dataset {dataset.name} holds {dataset.kind}s, not text; drop --template")
        return None, None
    if template is None:
        key = _template_key(dataset.name)
        if (
            key in TEMPLATES
            and key != "wordnet"
            and set(template_fields(TEMPLATES[key])) <= set(dataset.fields)
        ):
            name, text = key, TEMPLATES[key]
        elif len(dataset.fields) == 1 or "text" in dataset.fields:
            field = "text" if "text" in dataset.fields else dataset.fields[0]
            name, text = "plain", "{" + field + "}"
        else:
            raise UsageError(
                f"dataset {dataset.name} has several text fields ({', '.join(dataset.fields)}); "
                "pass --template, "
                f"e.g. a Table 11 name ({', '.join(TEMPLATES)}) or a string using those fields"
            )
    elif "{" in template:
        name, text = "custom", template
    elif _template_key(template) in TEMPLATES:
        name = _template_key(template)
        text = TEMPLATES[name]
    else:
        raise UsageError(
            f"unknown template {template!r}; use one of {', '.join(TEMPLATES)} "
            "or a string with {field} placeholders"
        )
    used = template_fields(text)
    if not used:
        raise UsageError(
            f"template {text!r} has no {{field}} placeholder; it would give every example the same prompt"
        )
    missing = [f for f in used if f not in dataset.fields]
    if missing:
        raise UsageError(
            f"template {name!r} uses {{{missing[0]}}} but dataset {dataset.name} has fields "
            f"{', '.join(dataset.fields)}; pick another template or rename the columns"
        )
    return name, text
