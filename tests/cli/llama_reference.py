"""An independent float64 llama forward pass in plain Python (no numpy), for
the small real model stories260K: reads the GGUF itself (F32 tensors only),
keeps a KV cache, and decodes greedily. It shares no code with m40llm and
follows the published llama recipe: RMSNorm, rotary embeddings on adjacent
pairs, grouped-query attention, SwiGLU, a final norm and the output matrix.

Only for tiny models: a token of stories260K costs a few hundred thousand
multiply-adds here (about 0.1 s)."""
import math
import struct

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}


class Gguf:
    """Metadata and F32 tensors of a GGUF v3 file."""

    def __init__(self, path):
        self.data = open(path, "rb").read()
        self.off = 0
        magic = self.data[:4]
        assert magic == b"GGUF", magic
        self.off = 4
        version, n_tensors, n_kv = self._unpack("<IQQ")
        assert version == 3, version
        self.meta = {}
        for _ in range(n_kv):
            key = self._str()
            (t,) = self._unpack("<I")
            self.meta[key] = self._value(t)
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            (n_dims,) = self._unpack("<I")
            dims = self._unpack("<" + "Q" * n_dims)
            (ttype,) = self._unpack("<I")
            (offset,) = self._unpack("<Q")
            infos.append((name, dims, ttype, offset))
        align = self.meta.get("general.alignment", 32)
        base = (self.off + align - 1) // align * align
        self.tensors = {}
        for name, dims, ttype, offset in infos:
            self.tensors[name] = (dims, ttype, base + offset)

    def _unpack(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.off)
        self.off += struct.calcsize(fmt)
        return v

    def _str(self):
        (n,) = self._unpack("<Q")
        s = self.data[self.off:self.off + n].decode("utf-8")
        self.off += n
        return s

    def _value(self, t):
        if t == 8:
            return self._str()
        if t == 9:
            et, n = self._unpack("<IQ")
            return [self._value(et) for _ in range(n)]
        return self._unpack("<" + _SCALAR[t])[0]

    def matrix(self, name):
        """An F32 tensor as rows (GGUF ne1) of ne0 floats."""
        dims, ttype, at = self.tensors[name]
        assert ttype == 0, f"{name}: only F32 tensors are read here"
        cols = dims[0]
        rows = 1
        for d in dims[1:]:
            rows *= d
        flat = struct.unpack_from("<%df" % (rows * cols), self.data, at)
        return [flat[r * cols:(r + 1) * cols] for r in range(rows)]

    def vector(self, name):
        return self.matrix(name)[0]


def _matvec(m, x):
    return [math.fsum(a * b for a, b in zip(row, x)) for row in m]


def _rmsnorm(x, w, eps):
    s = 1.0 / math.sqrt(math.fsum(v * v for v in x) / len(x) + eps)
    return [v * s * g for v, g in zip(x, w)]


class Llama:
    """The model of a llama-architecture GGUF with F32 weights."""

    def __init__(self, path):
        f = Gguf(path)
        m = f.meta
        assert m["general.architecture"] == "llama"
        self.n_embd = m["llama.embedding_length"]
        self.n_layer = m["llama.block_count"]
        self.n_head = m["llama.attention.head_count"]
        self.n_head_kv = m.get("llama.attention.head_count_kv", self.n_head)
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = m.get("llama.rope.dimension_count", self.head_dim)
        self.base = m.get("llama.rope.freq_base", 10000.0)
        self.eps = m["llama.attention.layer_norm_rms_epsilon"]
        self.embd = f.matrix("token_embd.weight")
        self.out = f.matrix("output.weight") if "output.weight" in f.tensors else self.embd
        self.out_norm = f.vector("output_norm.weight")
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            self.layers.append({k: (f.vector if k.endswith("norm") else f.matrix)(p + k + ".weight")
                                for k in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")})
        self.cache = [([], []) for _ in range(self.n_layer)]  # per layer: K rows, V rows

    def _rope(self, v, pos):
        out = list(v)
        for h in range(len(v) // self.head_dim):
            for i in range(self.n_rot // 2):
                theta = pos * self.base ** (-2.0 * i / self.n_rot)
                c, s = math.cos(theta), math.sin(theta)
                a, b = h * self.head_dim + 2 * i, h * self.head_dim + 2 * i + 1
                out[a] = v[a] * c - v[b] * s
                out[b] = v[a] * s + v[b] * c
        return out

    def step(self, token):
        """Feeds one token at the next position; returns the logits."""
        pos = len(self.cache[0][0])
        x = list(self.embd[token])
        hd, group = self.head_dim, self.n_head // self.n_head_kv
        for li, w in enumerate(self.layers):
            h = _rmsnorm(x, w["attn_norm"], self.eps)
            q = self._rope(_matvec(w["attn_q"], h), pos)
            k = self._rope(_matvec(w["attn_k"], h), pos)
            v = _matvec(w["attn_v"], h)
            keys, values = self.cache[li]
            keys.append(k)
            values.append(v)
            att = []
            for head in range(self.n_head):
                g = head // group
                qh = q[head * hd:(head + 1) * hd]
                scores = [math.fsum(a * b for a, b in zip(qh, kk[g * hd:(g + 1) * hd])) /
                          math.sqrt(hd) for kk in keys]
                mx = max(scores)
                e = [math.exp(s - mx) for s in scores]
                z = math.fsum(e)
                for d in range(hd):
                    att.append(math.fsum(p * vv[g * hd + d] for p, vv in zip(e, values)) / z)
            x = [a + b for a, b in zip(x, _matvec(w["attn_output"], att))]
            h = _rmsnorm(x, w["ffn_norm"], self.eps)
            gate = _matvec(w["ffn_gate"], h)
            up = _matvec(w["ffn_up"], h)
            act = [g / (1.0 + math.exp(-g)) * u for g, u in zip(gate, up)]
            x = [a + b for a, b in zip(x, _matvec(w["ffn_down"], act))]
        return _matvec(self.out, _rmsnorm(x, self.out_norm, self.eps))


def greedy(model, prompt, n):
    """n greedy tokens after the prompt, each with its margin (top1 - top2)."""
    for t in prompt:
        logits = model.step(t)
    out = []
    for _ in range(n):
        order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
        tok = order[0]
        out.append((tok, logits[order[0]] - logits[order[1]]))
        logits = model.step(tok)
    return out
