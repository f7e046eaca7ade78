"""``swarmgate completion bash|zsh``: a completion script generated from the parser."""

from __future__ import annotations

import argparse
import shlex

# -- completion ---------------------------------------------------------------------------------

BASH_COMPLETION = """\
# swarmgate completion for {shell}: eval "$(swarmgate completion {shell})"
{prelude}declare -A _swarmgate_words=(
{words}
)
declare -A _swarmgate_values=(
{values}
)
_swarmgate() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  local path=swarmgate w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${{COMP_WORDS[i]}}"
    if [[ -n "${{_swarmgate_words["$path $w"]+set}}" ]]; then path="$path $w"; fi
  done
  if [[ -n "${{_swarmgate_values["$path $prev"]+set}}" ]]; then
    COMPREPLY=($(compgen -W "${{_swarmgate_values["$path $prev"]}}" -- "$cur"))
  elif [[ "$cur" == @* ]]; then
    COMPREPLY=($(compgen -P @ -f -- "${{cur#@}}"))
  else
    COMPREPLY=($(compgen -W "${{_swarmgate_words["$path"]}}" -- "$cur"))
    if [[ ${{#COMPREPLY[@]}} -eq 0 && "$cur" != -* ]]; then
      COMPREPLY=($(compgen -f -- "$cur"))
    fi
  fi
}}
complete -F _swarmgate swarmgate
"""


def _completion_tree(
    parser: argparse.ArgumentParser, path: str, words: dict[str, str], values: dict[str, str]
) -> None:
    items: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                items.append(name)
                _completion_tree(child, f"{path} {name}", words, values)
            continue
        items.extend(o for o in action.option_strings if o.startswith("--"))
        if action.choices is not None:
            choices = " ".join(str(c) for c in action.choices)
            if action.option_strings:
                for opt in action.option_strings:
                    values[f"{path} {opt}"] = choices
            else:
                items.extend(str(c) for c in action.choices)
    words[path] = " ".join(items)


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    words: dict[str, str] = {}
    values: dict[str, str] = {}
    _completion_tree(parser, "swarmgate", words, values)

    def entries(table: dict[str, str]) -> str:
        return "\n".join(f"  [{shlex.quote(k)}]={shlex.quote(v)}" for k, v in sorted(table.items()))

    prelude = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    return BASH_COMPLETION.format(
        shell=shell, prelude=prelude, words=entries(words), values=entries(values)
    )
