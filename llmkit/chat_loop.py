"""The interactive chat that `llmkit chat` (transformers) and `llmkit ollama run` (Ollama) share:
the same prompt, commands and help, whatever answers.

The backend is one function, `reply(messages) -> str`: it streams the answer to stdout as it
is generated and returns it whole, so the conversation can go back to the model next turn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from llmkit.errors import InvalidArgument
from llmkit.ui import info, tell

Reply = Callable[[list[dict]], str]

HELP = """Commands:
  /bye            quit (also /exit, /quit, Ctrl-D)
  /system TEXT    set the system prompt (/system alone removes it)
  /clear          forget the conversation, keep the system prompt (also /reset)
  /help           show this list"""

QUIT = ("/bye", "/exit", "/quit")
CLEAR = ("/clear", "/reset")
NO_SYSTEM = "This model's chat template rejects system messages; put the instruction in your message."


def check_prompt(prompt: str | None) -> None:
    """A one-shot prompt must say something (an empty one would still cost a whole generation)."""
    if prompt is not None and not prompt.strip():
        raise InvalidArgument(
            "the prompt is empty", "give a question in quotes, or leave the prompt out to chat interactively"
        )


def one_shot(reply: Reply, prompt: str, system: str | None = None) -> str:
    check_prompt(prompt)
    return reply([*_system(system), {"role": "user", "content": prompt}])


def chat_loop(
    reply: Reply,
    *,
    name: str,
    system: str | None = None,
    accepts_system: bool = True,
    read: Callable[[str], str] = input,
    write: Callable[[str], object] | None = None,
) -> None:
    """Read a line, answer it, keep the history; until /bye, Ctrl-D or Ctrl-C at the prompt."""
    write = write or _stdout
    history = _system(system)
    info(f"Chatting with {name}: /bye to quit, /help for the commands.")
    while True:
        try:
            line = read(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not line:
            continue
        command, _, arg = line.partition(" ")
        if command in QUIT:
            return
        if command in CLEAR:
            history = _system(_system_text(history))
            info("Cleared the conversation.")
        elif command == "/system":
            if not accepts_system:
                tell(NO_SYSTEM)
                continue
            history = _system(arg.strip()) + [m for m in history if m["role"] != "system"]
            info("System prompt set." if arg.strip() else "System prompt removed.")
        elif command == "/help":
            tell(HELP)
        elif command.startswith("/"):
            tell(f"Unknown command {command}.\n{HELP}")
        else:
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": reply(history)})


def _system(text: str | None) -> list[dict]:
    return [{"role": "system", "content": text}] if text else []


def _system_text(history: list[dict]) -> str | None:
    return next((m["content"] for m in history if m["role"] == "system"), None)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
