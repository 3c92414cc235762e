"""Writes a tiny llama-architecture GGUF model for the integration tests.

The tests need a *real* OpenAI-compatible engine (llama-cpp-python's server) but may download no
model, so they write one: random weights, a self-built byte-level BPE vocabulary and a ChatML
chat template. The text it produces is gibberish made of English-ish word pieces; what matters is
that it loads cleanly, answers in milliseconds, and is byte-for-byte reproducible (fixed seed,
no timestamps in the file; with gguf 0.19.0 + numpy 2.4.6 its sha256 is 6c6d0b13...).

The model: llama architecture, 2 layers, hidden size 64, 4 heads, context 256, F32, 0.6 MB.
Its vocabulary (512 tokens, tokenizer.ggml.model "gpt2"): ids 0-255 are the bytes of the same
value (so the token-id prompt [72, 101, 108, 108, 111] reads "Hello"), 256-508 BPE merges learned
from CORPUS (e.g. "Hello" and " the" are one token each), 509 <|endoftext|> (bos, pad),
510 <|im_start|>, 511 <|im_end|> (eos, eot). No BOS is prepended to prompts.

Usage:  build-venv/bin/python tests/support/tiny_model.py OUT.gguf
        (or import it: tiny_model.write(path))

Needs the `gguf` and `numpy` packages (scripts/test-venv installs both into build-venv/).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile

import numpy as np

# Shape of the model. Small enough that a token takes well under a millisecond on one core;
# 4 heads of 16 so the attention code paths are the ordinary multi-head ones.
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX_TRAIN = 256
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
SEED = 20240601
OUT_ROW_NORM = 4.0  # length of each output.weight row (see build_weights)
SUPPRESS = -12.0  # logit bias of tokens never to be generated (see logit_bias)
N_MERGES = 253  # 256 bytes + 253 merges + 3 specials = 512 tokens

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen-style models ship it. llama-cpp-python renders it with Jinja2 when the server is
# started without --chat_format (it logs "Using gguf chat template").
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the BPE merges are learned from, so that tokens are recognisable word pieces (handy when
# reading a test's output) rather than arbitrary byte pairs.
CORPUS = """
The router sends each request to one of the engines that serve the model. When an engine
fails, the router stops sending it work, and the request goes to another engine instead.
Hello world! This is a test of the tiny model, which answers quickly and never says anything
useful. The quick brown fox jumps over the lazy dog. Every token is chosen by the weights,
and the weights are random numbers from a fixed seed, so the same prompt gives the same text.
A system message, a user message and an assistant message make up a chat conversation.
Streaming sends the answer in pieces as soon as they are ready; the last piece says why it
stopped: the length limit, a stop sequence, or the end of the turn. Numbers like 0 1 2 3 4 5
6 7 8 9 10 42 100 and 2024 appear in text too, as do questions? and answers.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what "gpt2" tokenizers store)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# Close to llama.cpp's "gpt-2" pre-tokenizer regex (ASCII-only, which is all CORPUS holds).
_PRETOKENIZE = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    """Returns (tokens, token types, merges).

    Token id == byte value for the first 256 tokens, so a token-id prompt such as
    [72, 101, 108, 108, 111] reads "Hello". Then the learned merges, then the special tokens.
    """
    import gguf

    enc = bytes_to_unicode()
    tokens = [enc[b] for b in range(256)]
    types = [gguf.TokenType.NORMAL] * 256

    # Plain BPE training: repeatedly merge the most frequent adjacent pair. Ties are broken by the
    # pair itself so the result never depends on dict ordering.
    words = collections.Counter("".join(enc[b] for b in w.encode()) for w in _PRETOKENIZE.findall(CORPUS))
    split = {w: list(w) for w in words}
    merges: list[str] = []
    known = set(tokens)
    while len(merges) < N_MERGES:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for w, n in words.items():
            s = split[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(f"{a} {b}")
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)
            types.append(gguf.TokenType.NORMAL)
        for w, s in split.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out

    tokens += SPECIALS
    types += [gguf.TokenType.CONTROL] * len(SPECIALS)
    return tokens, [int(t) for t in types], merges


def logit_bias(tokens: list[str]) -> np.ndarray:
    """Per-token logit bias (see build_weights), so that the random text stays readable ASCII.

    Printable ASCII bytes and newline: neutral. Merged word pieces: slightly favoured. Other bytes
    (control characters, and the bytes >= 0x80 that only make sense inside a UTF-8 sequence),
    <|endoftext|> and <|im_start|>: never. <|im_end|>: a rare but real choice, so that some chat
    answers end with finish_reason "stop" before max_tokens while others run to it.
    """
    bias = np.zeros(len(tokens), np.float32)
    for b in range(256):
        bias[b] = 0.0 if 32 <= b < 127 or b == 10 else SUPPRESS
    bias[256:len(tokens) - len(SPECIALS)] = 0.4
    bias[tokens.index("<|im_end|>")] = -0.6
    bias[tokens.index("<|endoftext|>")] = bias[tokens.index("<|im_start|>")] = SUPPRESS
    return bias


def build_weights(n_vocab: int, bias: np.ndarray) -> dict[str, np.ndarray]:
    """Seeded random weights, as numpy arrays in GGUF's (reversed) dimension order.

    Purely random weights would pick any token with about equal odds, control characters and
    stray UTF-8 continuation bytes included. So dimension 0 of the residual stream is a constant
    "bias" channel: every token embedding has a large value there and the layers neither read nor
    write it, so after the final RMS norm it is a positive, roughly constant value; output.weight's
    column 0 then acts as the per-token logit bias `bias`.
    """
    rng = np.random.default_rng(SEED)
    head_dim = N_EMBD // N_HEAD

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    # Input projections do not read the bias channel (column 0): a constant input would add the
    # same vector to every position's hidden state, and a few tokens would then win from almost
    # any context. Output projections do not write it (row 0), so it stays constant.
    def reads(rows: int) -> np.ndarray:
        m = normal(rows, N_EMBD, std=0.3)
        m[:, 0] = 0.0
        return m

    def writes(cols: int) -> np.ndarray:
        m = normal(N_EMBD, cols, std=0.3)
        m[0, :] = 0.0
        return m

    w: dict[str, np.ndarray] = {}
    emb = normal(n_vocab, N_EMBD, std=1.0)
    emb[:, 0] = 8.0
    w["token_embd.weight"] = emb  # numpy (n_vocab, n_embd) is GGUF ne = [n_embd, n_vocab]
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(N_EMBD, np.float32)
        w[p + "attn_q.weight"] = reads(N_HEAD * head_dim)
        w[p + "attn_k.weight"] = reads(N_HEAD_KV * head_dim)
        w[p + "attn_v.weight"] = reads(N_HEAD_KV * head_dim)
        w[p + "attn_output.weight"] = writes(N_HEAD * head_dim)
        w[p + "ffn_norm.weight"] = np.ones(N_EMBD, np.float32)
        w[p + "ffn_gate.weight"] = reads(N_FF)
        w[p + "ffn_up.weight"] = reads(N_FF)
        w[p + "ffn_down.weight"] = writes(N_FF)
    w["output_norm.weight"] = np.ones(N_EMBD, np.float32)
    out = normal(n_vocab, N_EMBD, std=1.0)
    # Equal row norms, so that no token wins merely by having a long row (it would then repeat
    # endlessly in greedy decoding).
    out[:, 1:] *= OUT_ROW_NORM / np.linalg.norm(out[:, 1:], axis=1, keepdims=True)
    out[:, 0] = bias
    # Tokens never to be picked get no random part: their logit is the large negative bias alone.
    out[bias <= SUPPRESS, 1:] = 0.0
    w["output.weight"] = out  # untied from token_embd, so the bias column stays out of the inputs
    return w


def write(path: str | os.PathLike[str]) -> str:
    """Writes the model to `path` (atomically: a partial file is never left under that name)."""
    import gguf

    tokens, types, merges = build_vocab()
    n_vocab = len(tokens)
    eot = tokens.index("<|endoftext|>")
    im_end = tokens.index("<|im_end|>")

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tiny-model-", suffix=".gguf", dir=directory)
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode an ordinary open() would (tests may run the
    # engine as another user).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        wr = gguf.GGUFWriter(tmp, "llama")
        wr.add_name("dpengine-tiny-test")
        wr.add_file_type(gguf.LlamaFileType.ALL_F32)
        wr.add_vocab_size(n_vocab)
        wr.add_context_length(N_CTX_TRAIN)
        wr.add_embedding_length(N_EMBD)
        wr.add_block_count(N_LAYER)
        wr.add_feed_forward_length(N_FF)
        wr.add_head_count(N_HEAD)
        wr.add_head_count_kv(N_HEAD_KV)
        wr.add_rope_dimension_count(N_EMBD // N_HEAD)
        wr.add_rope_freq_base(ROPE_BASE)
        wr.add_layer_norm_rms_eps(RMS_EPS)

        wr.add_tokenizer_model("gpt2")
        # Without a pre-tokenizer name llama.cpp warns "missing pre-tokenizer type" and guesses.
        wr.add_tokenizer_pre("gpt-2")
        wr.add_token_list(tokens)
        wr.add_token_types(types)
        wr.add_token_merges(merges)
        # Qwen-style ChatML ids: no BOS is prepended (add_bos_token false), <|im_end|> ends a turn.
        wr.add_bos_token_id(eot)
        wr.add_eos_token_id(im_end)
        wr.add_eot_token_id(im_end)
        wr.add_pad_token_id(eot)
        wr.add_add_bos_token(False)
        wr.add_add_eos_token(False)
        wr.add_chat_template(CHAT_TEMPLATE)

        for name, tensor in build_weights(n_vocab, logit_bias(tokens)).items():
            wr.add_tensor(name, tensor)
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="path of the .gguf file to write")
    args = ap.parse_args(argv)
    write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
