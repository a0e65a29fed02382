"""Named configurations: the four seed systems and our tuned default.

A seed preset reproduces its seed's architecture and data choices (input
encoding, layer sizes, dropout, sequence length, batch size, case folding,
validation share). The training regime is always storyloom's: every position
is a target and the state is carried between batches, because the seeds'
one-target-per-window recipe spends T LSTM steps to learn one character.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import DEFAULT_MINUTES, DataConfig, ModelConfig, RunConfig, TrainConfig, override
from .errors import UserError


@dataclass(frozen=True)
class Preset:
    description: str
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # The config dataclasses' defaults are this preset, chosen by a sweep on the benchmark split
    # (benchmarks/README.md): in a 10-minute budget one wide layer learns faster per second than
    # two narrower ones, and dropout only slows it (most of the train/val gap is there before any
    # text repeats: the validation plays differ). T=32 and T=64 end level; T=32 is ahead early,
    # which helps short runs. AdamW's weight decay of 0.1 (not 0.01) ends 0.05 bpc lower at 10
    # minutes, seed for seed; 0.3 holds the weights too small and ends level with 0.01. Evaluating the
    # weights' moving average (--average 0.1) ends 0.012 lower at 12,500 steps, and with it a rate of
    # 6e-3 another 0.009 (4e-3 before; without the average 6e-3 gained 0.006, 8e-3 lost 0.016). AdamW's first
    # beta of 0.6 rather than torch's 0.9 ends 0.028 lower at 12,500 steps (six seeds, each ahead; anything from 0
    # to 0.7 gains about as much), and more at the slower machines' budgets. With it a rate of 8e-3 is ahead of 6e-3
    # again: in 10 pairs of 10 over the GPU, AMX and Zen 3 (0.004-0.010), and by 0.05 on two small books from scratch
    # (six pairs of six).
    "default": Preset("tuned for 10 minutes on 2 CPU cores: embedding 128, LSTM 768, no dropout, T=32, B=32, lr 8e-3, "
                      "AdamW beta1 0.6, weight decay 0.1, the weights' moving average"),
    "story-writer": Preset(
        "seed 000: one-hot input, 2x LSTM 256, dropout 0.2, sequences of 40, batch 64",
        model=dict(input="onehot", hidden=256, layers=2, dropout=0.2),
        train=dict(seq_len=40, batch_size=64, lr=2e-3),
    ),
    "shakespeare": Preset(
        "seed 001: one-hot input, LSTM 128, sequences of 40, batch 64, 20% validation",
        model=dict(input="onehot", hidden=128, layers=1, dropout=0.0),
        data=dict(val_fraction=0.2),
        train=dict(seq_len=40, batch_size=64, lr=2e-3),
    ),
    "mysterious-island": Preset(
        "seed 002: embedding 256, LSTM 512, sequences of 40, batch 64",
        model=dict(input="embedding", embed=256, hidden=512, layers=1, dropout=0.0),
        train=dict(seq_len=40, batch_size=64, lr=2e-3),
    ),
    "heart-of-darkness": Preset(
        "seed 003: lowercase, scalar input (id scaled to [0,1]), LSTM 256, dropout 0.2, sequences of 100, batch 128",
        model=dict(input="scalar", hidden=256, layers=1, dropout=0.2),
        data=dict(lowercase=True),
        train=dict(seq_len=100, batch_size=128, lr=2e-3),
    ),
    "word": Preset(
        "seed 003's bonus: words (and punctuation, whitespace runs) with an embedding: 20k words, embedding 256 tied "
        "to the head, LSTM 768, T=32 words, B=32; case kept so its bpc compares with the character runs",
        model=dict(input="embedding", embed=256, hidden=768, layers=1, dropout=0.1, tie=True),
        data=dict(level="word", max_vocab=20000, min_count=2),
        train=dict(seq_len=32, batch_size=32, lr=4e-3),
    ),
    "bpe": Preset(
        "byte-level BPE of 2000 tokens (about 2.7 characters each): embedding 256 tied to the head, LSTM 768, "
        "T=32 tokens, B=32",
        model=dict(input="embedding", embed=256, hidden=768, layers=1, dropout=0.1, tie=True),
        data=dict(level="bpe", vocab_size=2000),
        train=dict(seq_len=32, batch_size=32, lr=4e-3),
    ),
    "transformer": Preset(
        "seed 002's next step, attention: a causal Transformer of 4 blocks, width 256, 4 heads, each character "
        "attending to the 128 before it, T=64, B=32",
        model=dict(input="embedding", embed=128, hidden=256, layers=4, dropout=0.0, cell="transformer", heads=4, context=128),
        train=dict(seq_len=64, batch_size=32, lr=2e-3),
    ),
    "gpu": Preset(
        "for one datacenter GPU (H100/H200): embedding 128, 2x LSTM 1536, dropout 0.4, T=128, B=256, lr 2e-3",
        # Measured on an H200 (benchmarks/README.md, GPU section): cuDNN's LSTM is sequential in
        # time and each step's GEMMs are small, so a 2x1536 LSTM at 256 streams trains as many
        # characters a second (1.8M) as a 2x1024 one and twice as many as 128 streams. A GPU
        # reads the 4.6M-character corpus 20+ times in 2 minutes, so it needs dropout; every
        # size and dropout tried there bottomed out at 1.817-1.830 val bpc after 10-15 passes.
        model=dict(input="embedding", embed=128, hidden=1536, layers=2, dropout=0.4),
        train=dict(seq_len=128, batch_size=256, lr=2e-3, warmup=200),
    ),
}

# One book is a tenth of the bundled corpus: trained from scratch for a few minutes, the default model reads it
# 10-40 times and memorises it. Measured on single books (benchmarks/README.md, "Your one book"):
# - dropout, best val bpc in 2 minutes with 0 / 0.25 / 0.5: a 116 KB play 2.257 / 2.144 / 2.122, Genesis (205 KB)
#   1.644 / 1.611 / 1.673, the New Testament (990 KB, 2.4 passes) 1.700 / 1.759 / -: below SMALL_TEXT, 0.25, the
#   best single value. Fine-tuned runs (--init) keep their base's: there 0.25 scored 0.01-0.08 worse than none.
# - passes: the schedule runs over --minutes, so a longer budget kept the rate high while the model memorised, and
#   5 minutes scored worse than 2 (the play: 2.189 against 2.146 from scratch, 1.770 against 1.744 fine-tuned). A run
#   on a small text ends after SMALL_TEXT_PASSES passes (or its minutes, if sooner), its rate decayed over them:
#   10 passes gave 2.119 / 1.737 (scratch / fine-tuned) on the play and 1.604 / 1.488 on Genesis, as good as or
#   better than either budget, in 0.6-2 minutes; 6 passes 2.204 from scratch, 4 passes 1.730 fine-tuned.
SMALL_TEXT = 500_000  # characters of training text
SMALL_TEXT_DROPOUT = 0.25
SMALL_TEXT_PASSES = 10


def small_text(cfg: RunConfig, train_chars: int, given: set[str], fine_tune: bool = False) -> str | None:
    """Adapt a new run's defaults to a small training text; a note saying what changed, or None.

    Only settings that neither the flags (`given`) nor the preset chose change, so a seed preset still
    reproduces its seed and a flag always wins. A fine-tuned run keeps its base's dropout.
    """
    if train_chars >= SMALL_TEXT:
        return None
    changed = []
    if not fine_tune and "dropout" not in given and "dropout" not in PRESETS[cfg.preset].model:
        cfg.model = override(cfg.model, dropout=SMALL_TEXT_DROPOUT)
        changed.append(f"dropout {SMALL_TEXT_DROPOUT:g} (--dropout 0 turns it off)")
    if not {"epochs", "steps"} & given:
        cfg.train = override(cfg.train, epochs=SMALL_TEXT_PASSES)
        changed.append(f"at most {SMALL_TEXT_PASSES} passes over it, the learning rate decayed over them (--epochs N "
                       "or --steps N to choose)")
    if not changed:
        return None
    return (f"a small text ({train_chars:,} training characters, under {SMALL_TEXT:,}), so that the model generalises "
            f"rather than memorises: {'; '.join(changed)}")


# The default's width was chosen where it trains at 12,000-25,000 characters a second (2 Intel cores, bf16). On 2 cores
# of an AMD Zen 3 (AVX2 alone, so fp32) it trains at 4,700-6,100, and a narrower LSTM learns more in 10 minutes
# (benchmarks/README.md, "The default's width on a slow machine"): 512 wide 1.991 val bpc, 768 2.064 (three seeds,
# 512 ahead in each at every evaluation); 384, seed 1, 2.018; batch 16 no lever (2.101). Where the default trains at
# 12,000 a second no narrower width was measured, so the threshold stays between the two rates. The default stays one
# model on every machine, so that its figures compare across machines: a slow run is told rather than changed.
SLOW_CHARS_PER_S = 8_000
SLOW_MINUTES = DEFAULT_MINUTES  # the budget measured; a longer run sees more text, where width pays
NARROW_HIDDEN = 512


def narrower(cfg: RunConfig, given: set[str], chars_per_s: float) -> str | None:
    """After a short run of the default preset that trained slowly, a note that a narrower LSTM learns more here;
    else None. Only a run whose model is the preset's own (no model flag, character level) and whose length is a
    time limit of at most SLOW_MINUTES is told."""
    tc = cfg.train
    short = 0 < tc.minutes <= SLOW_MINUTES and not (tc.steps or tc.epochs)
    if cfg.preset != "default" or given & (set(MODEL_FLAGS) | {"level"}) or not short or not 0 < chars_per_s < SLOW_CHARS_PER_S:
        return None
    return (f"the default's LSTM {cfg.model.hidden} learned {chars_per_s:,.0f} characters a second on this machine; at "
            f"that rate a run of {SLOW_MINUTES:g} minutes or less learns more with --hidden {NARROW_HIDDEN} (2 AMD Zen 3 "
            "cores, 10 minutes: over 2x the characters a second and 0.05 bpc lower; benchmarks/README.md)")


# Which config each flag belongs to. ModelConfig.vocab_size comes from the tokenizer; --vocab-size is BPE's.
MODEL_FLAGS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")
DATA_FLAGS = tuple(f.name for f in dataclasses.fields(DataConfig))


def names() -> list[str]:
    return list(PRESETS)


def build(name: str, overrides: dict | None = None) -> RunConfig:
    """The preset's RunConfig with `overrides` (flag names, None = not given) applied."""
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not a preset; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    model = {**p.model, **{k: v for k, v in given.items() if k in MODEL_FLAGS}}
    data = {**p.data, **{k: v for k, v in given.items() if k in DATA_FLAGS}}
    train = {**p.train, **{k: v for k, v in given.items() if k not in MODEL_FLAGS and k not in DATA_FLAGS}}
    return RunConfig(
        preset=name,
        model=override(ModelConfig(), **model),
        data=override(DataConfig(), **data),
        train=override(TrainConfig(), **train),
    )
