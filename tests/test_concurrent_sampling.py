"""One Generator drawing on several threads at once, as `difflab serve --concurrency N` does:
the first requests load the text encoder together, and a guided draw's attention maps stay
its own."""

import subprocess
import sys

from shapes_scoring import SHIPPED

SCRIPT = r"""
import threading, torch
from difflab.pipeline import Generator

gen = Generator.from_checkpoint("shapes-text", device="cpu")
guided_prompt = "a red circle to the left of a blue square"
start, errors, images = threading.Barrier(2), [], {}

def draw(name, n, prompt, **kw):
    start.wait()  # both threads make their first encoder calls at once
    try:
        for _ in range(2):
            images[name] = gen.generate(n, prompt=prompt, steps=6, seed=1, **kw)
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=draw, args=("guided", 1, guided_prompt)),
           threading.Thread(target=draw, args=("other", 2, "two green triangles"),
                            kwargs=dict(relation_guidance=0, binding_guidance=0))]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
alone = gen.generate(1, prompt=guided_prompt, steps=6, seed=1)
assert torch.equal(images["guided"], alone), "the guided draw read another thread's maps"
print("ok")
"""


@SHIPPED
def test_two_threads_draw_with_one_generator_as_each_would_alone():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
