"""`storyloom write`: co-writing in the terminal, a thin loop over writer.Session.

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


class CoWriter:
    """One terminal session: a command is a method, the story lives in the writer's Session."""

    def __init__(self, m: Writer, story: str, length: int, seed: int, sampling: SampleConfig, unknown: str,
                 inp: TextIO, out: TextIO):
        self.s = m.session(story, unknown)
        self.length, self.seed, self.sampling, self.inp, self.out = length, seed, sampling, inp, out
        self.tries = 0
        self.proposal: str | None = None
        self.say(f"co-writing with {m.run.path} (seed {seed}). :h for help.")

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def propose(self) -> None:
        self.tries += 1  # each proposal its own seed, so :n gives another and a session replays exactly
        self.proposal = self.s.propose(self.length, seed=self.seed + self.tries, sampling=self.sampling)
        self.say("--- proposal (:a accept, :r reject, :n another) ---")
        self.say(self.proposal)
        self.say("---")

    def pick(self, options: list[tuple[str, float]]) -> str | None:
        for i, (text, p) in enumerate(options, 1):
            self.say(f"  {i:2d}  {text!r:14}  {p:.3f}")
        self.say(f"pick 1-{len(options)} (empty to cancel)>")
        choice = self.inp.readline().strip()
        if choice.isdigit() and 1 <= int(choice) <= len(options):
            return options[int(choice) - 1][0]
        return None

    # -- the commands ------------------------------------------------------
    def accept(self, arg: str) -> None:
        if self.proposal is None:
            self.say("no proposal to accept; type some text or :n")
            return
        self.s.add(self.proposal)
        self.propose()

    def reject(self, arg: str) -> None:
        self.proposal = None
        self.say("rejected")

    def another(self, arg: str) -> None:
        self.propose()

    def choose(self, arg: str, words: bool) -> None:
        n = int(arg) if arg.strip().isdigit() else 5
        chosen = self.pick(self.s.next_words(n) if words else self.s.next_tokens(n))
        if chosen is not None:
            self.s.add(chosen)
            self.proposal = None
            self.say(f"added {chosen!r}")

    def save(self, arg: str) -> None:
        if not arg.strip():
            self.say("give a file name: :s story.txt")
            return
        with open(arg.strip(), "w") as f:
            f.write(self.s.story)
        self.say(f"saved {len(self.s.story)} characters to {arg.strip()}")

    def type(self, line: str) -> None:
        self.s.add(line + "\n" if line.endswith((".", "!", "?", ":")) else line + " ")
        self.propose()

    def run(self) -> int:
        commands = {":h": lambda a: self.say(HELP), ":a": self.accept, ":r": self.reject, ":n": self.another,
                    ":c": lambda a: self.choose(a, words=False), ":w": lambda a: self.choose(a, words=True),
                    ":p": lambda a: self.say(self.s.story), ":s": self.save}
        while True:
            self.out.write("> ")
            self.out.flush()
            line = self.inp.readline()
            if not line:
                self.say()
                return 0
            line = line.rstrip("\n")
            cmd, _, arg = line.partition(" ")
            if cmd == ":q":
                return 0
            try:
                if cmd in commands:
                    commands[cmd](arg)
                elif cmd.startswith(":"):
                    self.say(f"unknown command {cmd}; :h for help")
                else:
                    self.type(line)
            except (UserError, OSError) as e:
                self.say(f"error: {e}")


def run_session(m: Writer, story: str, length: int, seed: int, sampling: SampleConfig, unknown: str,
                inp: TextIO, out: TextIO) -> int:
    """Co-write over `inp`/`out` until :q or the end of input; returns the exit code."""
    return CoWriter(m, story, length, seed, sampling, unknown, inp, out).run()
