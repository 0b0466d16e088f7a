"""A Hugging Face BERT classifying generated "reviews", held the way transformers code
holds it (built from a small config: nothing is downloaded).

The items are dicts of ``input_ids``, ``attention_mask`` and ``labels``, as a tokenized
``datasets.Dataset`` yields after ``set_format("torch")``; autotune takes the target out
of ``labels``, calls the model as ``model(**batch)`` (its ``forward`` takes those names)
and reads the class logits from the ``SequenceClassifierOutput``.

Each review is 8 to 32 tokens from a vocabulary of 64, padded to 32. Tokens 10-19 are
positive words and 20-29 negative ones; the label says which kind occurs more often.
The data are generated from a fixed seed: every run sees the same 2,000 training and
500 validation reviews. Needs ``transformers`` (``pip install -e ".[examples]"``). Try it:

    autotune run examples/hf_text_classifier.py --trials 8
"""

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification

BASE = {"lr": 1e-3, "batch_size": 32, "epochs": 4, "weight_decay": 1e-2, "warmup": 0.1, "seed": 0}
CLASS_NAMES = ["negative", "positive"]

VOCAB, LENGTH, PAD = 64, 32, 0
POSITIVE, NEGATIVE = range(10, 20), range(20, 30)


def build_model() -> torch.nn.Module:
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=LENGTH, num_labels=len(CLASS_NAMES), pad_token_id=PAD,
    )
    return BertForSequenceClassification(config)


class Reviews(Dataset):
    """Tokenized reviews as dicts of tensors, like a tokenized Hugging Face dataset."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.input_ids = torch.full((n, LENGTH), PAD)
        self.attention_mask = torch.zeros(n, LENGTH, dtype=torch.long)
        self.labels = torch.zeros(n, dtype=torch.long)
        lengths = torch.randint(8, LENGTH + 1, (n,), generator=generator)
        for i, length in enumerate(lengths.tolist()):
            words = torch.randint(30, VOCAB, (length,), generator=generator)  # neutral words
            pos, neg = torch.randint(0, 4, (2,), generator=generator).tolist()
            if pos == neg:  # every review leans one way
                pos += 1
            sentiment = torch.cat([torch.randint(POSITIVE.start, POSITIVE.stop, (pos,), generator=generator),
                                   torch.randint(NEGATIVE.start, NEGATIVE.stop, (neg,), generator=generator)])
            places = torch.randperm(length, generator=generator)[: len(sentiment)]
            words[places] = sentiment
            self.input_ids[i, :length] = words
            self.attention_mask[i, :length] = 1
            self.labels[i] = int(pos > neg)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def build_datasets():
    generator = torch.Generator().manual_seed(1234)
    return Reviews(2000, generator), Reviews(500, generator)
