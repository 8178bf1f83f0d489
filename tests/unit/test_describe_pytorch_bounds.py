"""PyTorch zips without torch installed: the 10 GiB figure, a deflate bomb, other zips."""

from __future__ import annotations

import io
import struct
import zipfile

from gitmld.daemon.describe.readers import BytesReader, FileReader, HeadTailReader
from gitmld.daemon.describe.registry import describe

from tests.unit.torch_like import state_dict_pickle
from tests.unit.zip_builders import deflated_zeros, one_deflated_member_zip, sparse_zip64

LLAMA_LAYER = {
    "self_attn.q_proj.weight": (4096, 4096),
    "self_attn.k_proj.weight": (1024, 4096),
    "self_attn.v_proj.weight": (1024, 4096),
    "self_attn.o_proj.weight": (4096, 4096),
    "mlp.gate_proj.weight": (14336, 4096),
    "mlp.up_proj.weight": (14336, 4096),
    "mlp.down_proj.weight": (4096, 14336),
    "input_layernorm.weight": (4096,),
    "post_attention_layernorm.weight": (4096,),
}


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"model.layers.{i}.{k}": v for i in range(layers) for k, v in LLAMA_LAYER.items()}
    return {"model.embed_tokens.weight": (128256, 4096), **shapes, "model.norm.weight": (4096,)}


def test_ten_gib_checkpoint_reads_under_one_mib(tmp_path):
    """data.pkl of a 32-layer Llama-shaped state dict first, then 10 GiB of stored storages."""
    pkl = state_dict_pickle(llama_shapes(32))
    path = tmp_path / "big.pt"
    sparse_zip64(path, [("big/data.pkl", pkl), ("big/version", b"3\n"), ("big/data/0", 10 * 2**30)])
    with zipfile.ZipFile(path) as z:  # the hand-made zip64 is a valid zip
        assert z.read("big/data.pkl") == pkl and z.getinfo("big/data/0").file_size == 10 * 2**30
    with FileReader(path) as r:
        lines = describe(r)
        assert r.size > 10 * 2**30
        assert r.bytes_read < 2**20, r.bytes_read
    d = dict(lines)
    assert d["format"] == "pytorch" and d["serialization"] == "3" and d["tensors"] == str(32 * 9 + 2)
    assert d["dtypes"] == "BF16" and d["tensor-groups"] == "model.embed_tokens.*:1,model.layers.*:288,model.norm.*:1"
    assert r.bytes_read < 2**20
    print(f"pytorch 10 GiB: read {r.bytes_read} bytes")


def test_small_checkpoint_lists_every_tensor():
    pkl = state_dict_pickle({"w": (4, 3), "b": (4,)}, storage_class="FloatStorage")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/data.pkl", pkl)
        z.writestr("m/data/0", b"\0" * 48)
    lines = describe(BytesReader(buf.getvalue()))
    assert [v for k, v in lines if k == "tensor"] == ["b F32 4", "w F32 4x3"]
    data = buf.getvalue()
    assert describe(HeadTailReader(data[:8192], data[-1024:], len(data))) == lines


def test_other_zips_are_not_checkpoints():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
        z.writestr("nested/deeper/data.pkl", "not top-level")
    assert describe(BytesReader(buf.getvalue())) == [("format", "zip")]


def test_deflated_pickle_bomb_is_bounded():
    """A data.pkl that inflates to 80 MiB: at most 64 MiB is ever inflated, and describing ends."""
    start = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01\x8e" + struct.pack("<Q", 80 * 2**20)
    reader = BytesReader(one_deflated_member_zip(b"archive/data.pkl", deflated_zeros(start, 80, b"s."), 80 * 2**20))
    lines = dict(describe(reader))
    assert lines["format"] == "pytorch"
    assert "scan stopped" in lines["note"]
    assert reader.bytes_read < 2 * 2**20
