"""autonumactl completion bash|zsh: a shell completion script generated from autonumactl's own parser.

The parser is the one source: verbs, each verb's options and positional arguments,
and the choices argparse knows (knob names for get/set, bash|zsh, install|uninstall)
are read from it, so a new verb or option completes without touching this file.
An option that takes a value without choices completes file names unless it takes a
number. Options hidden from --help are skipped as words but still understood (their
value is not mistaken for a verb).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field

PROG = "autonumactl"

DESCRIPTION = f"""\
Print a completion script for bash or zsh on stdout.

Use it in the current shell:
  bash:  source <({PROG} completion bash)
  zsh:   source <({PROG} completion zsh)      (after compinit)

Or for every shell, e.g.:
  {PROG} completion bash > /etc/bash_completion.d/{PROG}
  {PROG} completion zsh > "${{fpath[1]}}/_{PROG}"
"""


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()
    files: bool = False  # a value without choices that is not a number: complete file names
    hidden: bool = False


@dataclass(frozen=True)
class Positional:
    name: str
    help: str
    choices: tuple[str, ...] = ()
    optional: bool = False


@dataclass
class CommandSpec:
    help: str = ""
    options: list[Option] = field(default_factory=list)
    positionals: list[Positional] = field(default_factory=list)


@dataclass
class ProgramSpec:
    globals: CommandSpec
    verbs: dict[str, CommandSpec]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")


def run(args: argparse.Namespace) -> int:
    from autonumad.cli import build_parser  # the dispatcher imports this module

    spec = describe_parser(build_parser())
    sys.stdout.write(bash_script(spec) if args.shell == "bash" else zsh_script(spec))
    return 0


# ---------------------------------------------------------------- reading the parser

def _help_text(action: argparse.Action) -> str:
    text = " ".join((action.help or "").split()).replace("%%", "%")
    return text if len(text) <= 72 else text[:69] + "..."


def _describe_command(parser: argparse.ArgumentParser, help_text: str = "") -> tuple[CommandSpec, dict]:
    spec = CommandSpec(help=help_text)
    verbs: dict[str, argparse.ArgumentParser] = {}
    verb_help: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            verbs.update(action.choices)
            verb_help.update({a.dest: a.help or "" for a in action._choices_actions})
            continue
        choices = tuple(str(c) for c in action.choices or ())
        if action.option_strings:
            takes_value = action.nargs != 0
            spec.options.append(Option(
                flags=tuple(action.option_strings), help=_help_text(action), takes_value=takes_value,
                choices=choices, files=takes_value and not choices and action.type not in (int, float),
                hidden=action.help == argparse.SUPPRESS))
        else:
            spec.positionals.append(Positional(
                name=action.metavar or action.dest, help=_help_text(action), choices=choices,
                optional=action.nargs in ("?", "*")))
    return spec, {verb: (sub, verb_help.get(verb, "")) for verb, sub in verbs.items()}


def describe_parser(parser: argparse.ArgumentParser) -> ProgramSpec:
    """Verbs, options and arguments of a parser with one level of sub-commands."""
    globals_spec, verbs = _describe_command(parser)
    return ProgramSpec(globals_spec, {verb: _describe_command(sub, help_text)[0]
                                      for verb, (sub, help_text) in verbs.items()})


# ---------------------------------------------------------------- bash

def _shell_word(word: str) -> str:
    """A word that needs no quoting in a case pattern or a word list."""
    if not re.fullmatch(r"[A-Za-z0-9_.:/@%+=,-]+", word):
        raise ValueError(f"cannot put {word!r} in a completion script")
    return word


def _value_kind(option: Option) -> str:
    if option.choices:
        return " ".join(_shell_word(c) for c in option.choices)
    return "@files" if option.files else "@any"


def bash_script(spec: ProgramSpec) -> str:
    commands = {"": spec.globals, **spec.verbs}
    value_cases, option_cases, positional_cases = [], [], []
    for verb, command in commands.items():
        for option in command.options:
            if option.takes_value:
                for flag in option.flags:
                    value_cases.append(f'        "{verb} {_shell_word(flag)}") echo "{_value_kind(option)}" ;;')
        words = " ".join(_shell_word(f) for o in command.options if not o.hidden for f in o.flags)
        option_cases.append(f'        "{verb}") echo "{words}" ;;')
        for index, positional in enumerate(command.positionals):
            choices = " ".join(_shell_word(c) for c in positional.choices)
            positional_cases.append(f'        "{verb} {index}") echo "{choices}" ;;')
    verbs = " ".join(_shell_word(v) for v in spec.verbs)
    return f"""\
# bash completion for {PROG}, generated by `{PROG} completion bash`.
# In this shell:   source <({PROG} completion bash)
# In every shell:  {PROG} completion bash > /etc/bash_completion.d/{PROG}

# The values option $2 of verb $1 ("" before the verb) takes: its choices, @files or
# @any; fails if the option takes no value.
_{PROG}_option_values() {{
    case "$1 $2" in
{chr(10).join(value_cases)}
        *) return 1 ;;
    esac
}}

_{PROG}_options() {{
    case "$1" in
{chr(10).join(option_cases)}
    esac
}}

# The choices of positional argument number $2 (from 0) of verb $1.
_{PROG}_positional() {{
    case "$1 $2" in
{chr(10).join(positional_cases)}
    esac
}}

_{PROG}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local verb="" npos=0 i word values
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ $word == -* ]]; then
            if [[ $word != *=* ]] && _{PROG}_option_values "$verb" "$word" >/dev/null; then
                ((i++))
            fi
        elif [[ -z $verb ]]; then
            verb=$word
        else
            ((npos++))
        fi
    done
    COMPREPLY=()
    if [[ $prev == -* && $prev != *=* ]] && values=$(_{PROG}_option_values "$verb" "$prev"); then
        case $values in
            @files) compopt -o filenames 2>/dev/null
                    mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
            @any) ;;
            *) mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur") ;;
        esac
    elif [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_{PROG}_options "$verb")" -- "$cur")
    elif [[ -z $verb ]]; then
        mapfile -t COMPREPLY < <(compgen -W "{verbs}" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -W "$(_{PROG}_positional "$verb" "$npos")" -- "$cur")
    fi
}}

complete -F _{PROG} {PROG}
"""


# ---------------------------------------------------------------- zsh

def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_description(text: str) -> str:
    """Text inside an _arguments [description]."""
    return text.replace("\\", "\\\\").replace("[", "(").replace("]", ")").replace(":", "\\:")


def _zsh_action(option_choices: tuple[str, ...], files: bool) -> str:
    if option_choices:
        return "(" + " ".join(_shell_word(c) for c in option_choices) + ")"
    return "_files" if files else " "


def _zsh_specs(command: CommandSpec) -> list[str]:
    specs = []
    for option in command.options:
        if option.hidden:
            continue
        for flag in option.flags:
            spec = f"{_shell_word(flag)}{'=' if option.takes_value and flag.startswith('--') else ''}" \
                   f"[{_zsh_description(option.help)}]"
            if option.takes_value:
                message = max(option.flags, key=len).lstrip("-").replace(":", "")
                spec += f":{message}:{_zsh_action(option.choices, option.files)}"
            specs.append(_zsh_quote(spec))
    for index, positional in enumerate(command.positionals, start=1):
        colon = "::" if positional.optional else ":"
        message = _zsh_description(positional.name.lower())
        specs.append(_zsh_quote(f"{index}{colon}{message}:{_zsh_action(positional.choices, False)}"))
    return specs


def zsh_script(spec: ProgramSpec) -> str:
    join = " \\\n                        "
    verb_cases = []
    for verb, command in spec.verbs.items():
        specs = _zsh_specs(command)
        call = f"_arguments{join}{join.join(specs)}" if specs else "_message 'no more arguments'"
        verb_cases.append(f"                ({_shell_word(verb)})\n                    {call} && ret=0 ;;")
    verb_items = "\n".join(f"        {_zsh_quote(_shell_word(v) + ':' + c.help)}" for v, c in spec.verbs.items())
    global_specs = "".join(f" \\\n        {s}" for s in _zsh_specs(spec.globals))
    return f"""\
#compdef {PROG}
# zsh completion for {PROG}, generated by `{PROG} completion zsh`.
# In this shell (after compinit):  source <({PROG} completion zsh)
# In every shell:  {PROG} completion zsh > "${{fpath[1]}}/_{PROG}"

_{PROG}() {{
    local curcontext=$curcontext state state_descr line ret=1
    typeset -A opt_args
    local -a verbs=(
{verb_items}
    )
    _arguments -C{global_specs} \\
        '1: :->verb' \\
        '*:: :->args' && ret=0
    case $state in
        (verb)
            _describe -t verbs '{PROG} verb' verbs && ret=0 ;;
        (args)
            curcontext=${{curcontext%:*:*}}:{PROG}-$words[1]:
            case $words[1] in
{chr(10).join(verb_cases)}
            esac ;;
    esac
    return ret
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _{PROG} "$@"
else
    compdef _{PROG} {PROG}
fi
"""
