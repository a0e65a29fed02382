"""`storyloom write`: co-writing in the terminal, a thin loop over api.Session.

Line-based, so it works the same typed by hand or piped from a file:
text adds to the story and asks for a proposal; commands start with ':'.
"""

from __future__ import annotations

from typing import TextIO

from .config import SampleConfig
from .errors import UserError
from .writer import Writer

HELP = """Type text to add it to the story; the model then proposes a continuation.
  :a        accept the proposal (it joins the story) and propose more
  :r        reject the proposal
  :n        propose another
  :c [N]    the N likeliest next characters, to pick one by number
  :w [N]    the N likeliest next words, to pick one by number
  :p        print the story so far
  :s FILE   save the story to FILE
  :h        this help
  :q        quit (end of input quits too)"""


def run_session(m: Writer, story: str, length: int, seed: int, sampling: SampleConfig, unknown: str,
                inp: TextIO, out: TextIO) -> int:
    s = m.session(story, unknown)
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    say(f"co-writing with {m.run.path} (seed {seed}). :h for help.")
    tries = 0
    proposal = None

    def propose() -> str:
        nonlocal tries
        tries += 1
        text = s.propose(length, seed=seed + tries, sampling=sampling)
        say("--- proposal (:a accept, :r reject, :n another) ---")
        say(text)
        say("---")
        return text

    def pick(options: list[tuple[str, float]]) -> str | None:
        for i, (text, p) in enumerate(options, 1):
            say(f"  {i:2d}  {text!r:14}  {p:.3f}")
        say(f"pick 1-{len(options)} (empty to cancel)>")
        line = inp.readline()
        choice = line.strip()
        if choice.isdigit() and 1 <= int(choice) <= len(options):
            return options[int(choice) - 1][0]
        return None

    while True:
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line:
            say()
            break
        line = line.rstrip("\n")
        cmd, _, arg = line.partition(" ")
        try:
            if cmd == ":q":
                break
            elif cmd == ":h":
                say(HELP)
            elif cmd == ":a":
                if proposal is None:
                    say("no proposal to accept; type some text or :n")
                    continue
                s.add(proposal)
                proposal = propose()
            elif cmd == ":r":
                proposal = None
                say("rejected")
            elif cmd == ":n":
                proposal = propose()
            elif cmd in (":c", ":w"):
                n = int(arg) if arg.strip().isdigit() else 5
                options = s.next_tokens(n) if cmd == ":c" else s.next_words(n)
                chosen = pick(options)
                if chosen is not None:
                    s.add(chosen)
                    proposal = None
                    say(f"added {chosen!r}")
            elif cmd == ":p":
                say(s.story)
            elif cmd == ":s":
                if not arg.strip():
                    say("give a file name: :s story.txt")
                    continue
                with open(arg.strip(), "w") as f:
                    f.write(s.story)
                say(f"saved {len(s.story)} characters to {arg.strip()}")
            elif cmd.startswith(":"):
                say(f"unknown command {cmd}; :h for help")
            else:
                s.add(line + "\n" if line.endswith((".", "!", "?", ":")) else line + " ")
                proposal = propose()
        except (UserError, OSError) as e:
            say(f"error: {e}")
    return 0
