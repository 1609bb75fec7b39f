#!/usr/bin/env python3
"""End-to-end checks of the m40llm binary: the stable `mkmodel`, `tokenize`,
`eval` and `generate` interfaces that outside checks rely on.

usage: cli_test.py M40LLM_BINARY (unit|conformance)

`unit` works on a model made by `mkmodel`; `conformance` runs `eval` and
`tokenize` on the fixture models and compares with llama.cpp's references
(skipping, with a message, when $M40LLM_FIXTURES is not set).
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile

SKIP = 77  # ctest SKIP_RETURN_CODE


def run(binary, *args, check=True):
    p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}: {p.stderr}")
    return p


def has_gpu():
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def unit(binary):
    with tempfile.TemporaryDirectory() as d:
        os.environ["M40LLM_CACHE_DIR"] = d
        model = os.path.join(d, "m.gguf")
        run(binary, "mkmodel", "-o", model, "--n-embd", "64", "--n-layer", "2",
            "--n-head", "4", "--n-head-kv", "2", "--n-ff", "128", "--seed", "3")
        # Same spec, same bytes.
        model2 = os.path.join(d, "m2.gguf")
        run(binary, "mkmodel", "-o", model2, "--n-embd", "64", "--n-layer", "2",
            "--n-head", "4", "--n-head-kv", "2", "--n-ff", "128", "--seed", "3")
        assert open(model, "rb").read() == open(model2, "rb").read(), "mkmodel is not deterministic"

        # A preset with explicit shape flags overriding it; the thread count
        # does not change the bytes; the padded vocabulary tokenizes as before.
        cut = ["--preset", "tinyllama-1.1b", "--n-layer", "1", "--n-embd", "256", "--n-ff",
               "512", "--type", "q8_0"]
        preset1 = os.path.join(d, "p1.gguf")
        preset2 = os.path.join(d, "p2.gguf")
        run(binary, "mkmodel", "-o", preset1, *cut, "--threads", "1")
        run(binary, "mkmodel", "-o", preset2, *cut, "--threads", "2")
        assert open(preset1, "rb").read() == open(preset2, "rb").read(), "bytes depend on --threads"
        info = run(binary, "info", "-m", preset1).stdout
        for want in ("n_vocab 32000", "n_embd 256", "n_layer 1", "n_head 32", "n_head_kv 4",
                     "n_ff 512", "context 2048"):
            assert want in info, (want, info)
        os.remove(preset2)
        tok_small = run(binary, "tokenize", "-m", model, "--text", "the model", "--json").stdout
        tok_big = run(binary, "tokenize", "-m", preset1, "--text", "the model", "--json").stdout
        assert tok_small == tok_big, (tok_small, tok_big)
        bad = run(binary, "mkmodel", "-o", os.path.join(d, "x.gguf"), "--preset", "gpt5",
                  check=False)
        assert bad.returncode != 0 and "tinyllama-1.1b" in bad.stderr, bad.stderr

        tok = json.loads(run(binary, "tokenize", "-m", model, "--text", "hello world",
                             "--json").stdout)
        assert isinstance(tok["tokens"], list) and len(tok["tokens"]) >= 2, tok
        assert tok["tokens"][0] == 1, "BOS expected first"
        nobos = json.loads(run(binary, "tokenize", "-m", model, "--text", "hello world",
                               "--json", "--no-add-special").stdout)
        assert nobos["tokens"] == tok["tokens"][1:], (nobos, tok)

        ev = json.loads(run(binary, "eval", "-m", model, "--tokens", "1,50,60,70", "-n", "5",
                            "--json").stdout)
        assert ev["prompt_tokens"] == [1, 50, 60, 70], ev["prompt_tokens"]
        n_vocab = ev["n_vocab"]
        assert len(ev["last_logits"]) == n_vocab
        assert all(math.isfinite(x) for x in ev["last_logits"])
        assert len(ev["prompt_top1"]) == 4 and len(ev["greedy"]) == 5
        # The first greedy token is the argmax of the last logits.
        logits = ev["last_logits"]
        best = max(range(n_vocab), key=lambda i: (logits[i], -i))
        assert ev["greedy"][0]["token"] == best, (ev["greedy"][0], best)
        assert ev["prompt_top1"][-1]["token"] == best

        # --version: the version, the commit and what CUDA the build targets.
        ver = run(binary, "--version").stdout
        assert ver.startswith("m40llm ") and "commit " in ver and "CUDA" in ver, ver

        # Greedy generation is deterministic and reports speeds on stderr.
        a = run(binary, "generate", "-m", model, "-p", "the cat", "-n", "8", "--temperature", "0")
        b = run(binary, "generate", "-m", model, "-p", "the cat", "-n", "8", "--temperature", "0")
        assert a.stdout == b.stdout
        assert "tok/s" in a.stderr, a.stderr

        # Without --model the demo model is written to the cache and announced.
        demo = run(binary, "generate", "-p", "hi", "-n", "4")
        assert "gibberish" in demo.stderr, demo.stderr
        assert any(f.endswith(".gguf") for f in os.listdir(d))

        # Bad input: clear errors, non-zero exit.
        bad = run(binary, "eval", "-m", model, "--tokens", "1,99999", "--json", check=False)
        assert bad.returncode != 0 and "vocabulary" in bad.stderr, bad.stderr
        junk = os.path.join(d, "junk.gguf")
        open(junk, "wb").write(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
        bad = run(binary, "info", "-m", junk, check=False)
        assert bad.returncode != 0 and "junk.gguf" in bad.stderr and "offset" in bad.stderr, bad.stderr
        bad = run(binary, "generate", "-m", model, "-p", "x", "--top-p", "0", check=False)
        assert bad.returncode != 0 and "top_p" in bad.stderr, bad.stderr
        # The benchmark command: a table and JSON (tiny settings; its numbers
        # are not checked, only that it measures every phase asked for).
        bench_json = os.path.join(d, "bench.json")
        bench = run(binary, "bench", "-m", model, "--backend", "cpu", "--batches", "1,2",
                    "--steps", "2", "--context", "8", "--prefill", "16", "--reps", "1",
                    "--json", bench_json)
        assert "decode" in bench.stdout and "prefill 16" in bench.stdout, bench.stdout
        bj = json.load(open(bench_json))
        assert [r["batch"] for r in bj["decode"]] == [1, 2], bj["decode"]
        assert all(r["ms_per_step"] > 0 and r["tok_per_s"] > 0 for r in bj["decode"]), bj
        assert bj["prefill"]["tokens"] == 16 and bj["prefill"]["ms"] > 0, bj["prefill"]
        assert bj["backend"] == "cpu" and bj["weight_bytes_per_step"] > 0, bj

        # chat-template: the raw prompt (Llama 3, written out by hand), from a
        # family name and from a template file, with and without the
        # generation prompt; an unknown template is an error naming its line.
        msgs = os.path.join(d, "msgs.json")
        with open(msgs, "w", encoding="utf-8") as f:
            json.dump([{"role": "system", "content": " Be brief. "},
                       {"role": "user", "content": "Caf\u00e9?"}], f)
        want = ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nCaf\u00e9?<|eot_id|>")
        gen_prompt = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        out = run(binary, "chat-template", "--template", "llama3", "--messages", msgs).stdout
        assert out == want + gen_prompt, repr(out)
        tmpl = os.path.join(d, "llama3.jinja")
        with open(tmpl, "w") as f:
            f.write("{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}")
        out = run(binary, "chat-template", "--template", tmpl, "--messages", msgs,
                  "--no-generation-prompt").stdout
        assert out == want, repr(out)
        with open(tmpl, "w") as f:
            f.write("<<{{ mystery }}>>\n")
        bad = run(binary, "chat-template", "--template", tmpl, "--messages", msgs, check=False)
        assert bad.returncode == 1 and "<<{{ mystery }}>>" in bad.stderr, bad.stderr
        # Ctrl-C during generate ends the generation, not the process: the text
        # so far ends with a newline and the stats follow.
        p = subprocess.Popen([binary, "generate", "-m", model, "-p", "the cat", "-n", "100000",
                              "-c", "100100", "--ignore-eos", "--temperature", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = p.stdout.read(40)  # some text has streamed
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (p.returncode, err)
        assert (first + out).endswith("\n") and "finish: interrupted" in err, err

        # generate -f FILE and --prompt - read the prompt from a file and stdin.
        pf = os.path.join(d, "prompt.txt")
        with open(pf, "w") as f:
            f.write("the cat")
        c = run(binary, "generate", "-m", model, "-f", pf, "-n", "8", "--temperature", "0")
        assert c.stdout == a.stdout, (c.stdout, a.stdout)
        p = subprocess.run([binary, "generate", "-m", model, "-p", "-", "-n", "8",
                            "--temperature", "0"], input="the cat", capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0 and p.stdout == a.stdout, (p.stdout, p.stderr)

        # --backend cuda where there is no GPU (or no CUDA build): a clear
        # error, no crash.
        if not has_gpu():
            nogpu = run(binary, "generate", "-m", model, "-p", "x", "-n", "2", "--backend", "cuda",
                        check=False)
            assert nogpu.returncode == 1, (nogpu.returncode, nogpu.stderr)
            assert "--backend cuda" in nogpu.stderr and "--backend cpu" in nogpu.stderr or \
                "without CUDA" in nogpu.stderr, nogpu.stderr
    print("cli unit checks passed")
    return 0


MARGINS = {"f16": 0.05, "bf16": 0.1}


def conformance(binary):
    fx = os.environ.get("M40LLM_FIXTURES") or os.environ.get("M40LLM_FIXTURES_DEFAULT", "")
    if not fx or not os.path.isdir(fx):
        print("conformance fixtures not found: set M40LLM_FIXTURES to the fixtures folder")
        return SKIP
    prompts = open(os.path.join(fx, "reference", "prompts.txt"), encoding="utf-8").read().split("\n")
    checked = 0
    for model in ("tiny-llama-f16", "tiny-llama-q4_k_m"):
        path = os.path.join(fx, "models", model + ".gguf")
        margin = MARGINS.get(model.split("-")[-1], 0.5)
        for i in range(4):
            ref = json.load(open(os.path.join(fx, "reference", f"{model}.p{i}.json")))
            assert ref["prompt"] == prompts[i]
            tok = json.loads(run(binary, "tokenize", "-m", path, "--text", ref["prompt"],
                                 "--special", "--json").stdout)
            assert tok["tokens"] == ref["prompt_tokens"], (model, i)
            ev = json.loads(run(binary, "eval", "-m", path, "-p", ref["prompt"], "-n",
                                str(len(ref["greedy"])), "--json").stdout)
            assert ev["prompt_tokens"] == ref["prompt_tokens"]
            for s, g in enumerate(ref["greedy"]):
                if g["margin"] < margin:
                    break
                assert ev["greedy"][s]["token"] == g["token"], (model, i, s)
            checked += 1
    print(f"cli conformance: {checked} model/prompt pairs agree with llama.cpp")

    # A real trained model: greedy decoding of "Once upon a time" on
    # stories260K continues as an independent float64 reference
    # (llama_reference.py) does, wherever that reference is sure (margin at
    # least 0.05: our weights are FP16, the file's F32); its tokenization is
    # the start of llama.cpp's for prompt 2, which begins with those words.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import llama_reference
    path = os.path.join(fx, "models", "stories260k.gguf")
    ref2 = json.load(open(os.path.join(fx, "reference", "stories260k.p2.json")))
    assert ref2["prompt"].startswith("Once upon a time,")
    tok = json.loads(run(binary, "tokenize", "-m", path, "--text", "Once upon a time",
                         "--json").stdout)["tokens"]
    assert tok == ref2["prompt_tokens"][:len(tok)], (tok, ref2["prompt_tokens"][:8])
    n = 40
    ev = json.loads(run(binary, "eval", "-m", path, "--tokens", ",".join(map(str, tok)), "-n",
                        str(n), "--json").stdout)
    want = llama_reference.greedy(llama_reference.Llama(path), tok, n)
    agreed = 0
    for s, (t, margin) in enumerate(want):
        if margin < 0.05:
            break
        assert ev["greedy"][s]["token"] == t, (s, ev["greedy"][s], t, margin)
        agreed += 1
    assert agreed >= 8, f"the reference was sure for only {agreed} steps"
    text = run(binary, "generate", "-m", path, "-p", "Once upon a time", "-n", str(agreed),
               "--temperature", "0").stdout
    print(f"cli conformance: stories260k greedy agrees with the float64 reference for {agreed} "
          f"steps: {text.strip()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(unit(sys.argv[1]) if sys.argv[2] == "unit" else conformance(sys.argv[1]))
