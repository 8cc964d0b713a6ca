"""MemGen's (and the FlashMem paper's) GSM8K recipe: its prompt (`--prompt memgen`) and its SFT targets
(`--targets memgen`: the rationale with calculator annotations, then \\boxed{answer})."""
import pytest
from test_loader import CHATML
from tiny_assets import tiny_tokenizer, write_jsonl

from flashmem.data.answers import extract_number
from flashmem.data.datasets import load_examples, memgen_target
from flashmem.data.prompts import format_prompt, system_prompt
from flashmem.errors import FlashmemError
from flashmem.training.train import TrainConfig, load_data

ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                   "How many clips did Natalia sell altogether in April and May?",
       "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
                 "in April and May.\n#### 72"}
INSTRUCTION = "Solve the math problem with proper reasoning, and make sure to put the FINAL ANSWER inside \\boxed{}."


@pytest.fixture
def gsm8k_dir(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", [ROW] * 6)
    return tmp_path


def test_the_target_keeps_the_calculator_marks_and_boxes_the_answer(gsm8k_dir):
    (example,), _ = load_examples("gsm8k", "train", str(gsm8k_dir), limit=1)
    assert "<<" not in example.answer  # flashmem's own reference target drops the marks
    target = memgen_target(example).answer
    assert target == ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                      "altogether in April and May.\\boxed{72}")
    assert extract_number(target) == "72" == example.final


def test_the_prompt_is_memgens_frame_in_the_users_turn():
    tok = tiny_tokenizer()
    tok.chat_template = None
    frame = f"{INSTRUCTION}Question: {ROW['question']}\n"
    assert format_prompt(tok, ROW["question"], system_prompt("memgen")) == frame  # no chat template: the frame alone
    tok.chat_template = CHATML
    assert format_prompt(tok, ROW["question"], system_prompt("memgen")) == (
        f"<|im_start|>user\n{frame}<|im_end|>\n<|im_start|>assistant\n")


def test_training_data_gets_memgen_targets(gsm8k_dir, tmp_path):
    cfg = TrainConfig(data="gsm8k", data_dir=str(gsm8k_dir), out=str(tmp_path / "m"), targets="memgen",
                      prompt="memgen", val_size=2)
    train_ex, val_ex, _ = load_data(cfg)
    assert len(train_ex) == 4 and len(val_ex) == 2
    assert all(ex.answer.endswith("\\boxed{72}") and "<<48/2=24>>" in ex.answer for ex in train_ex + val_ex)


def test_a_set_without_rationales_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"question": "1 + 1?", "answer": "2"}])
    cfg = TrainConfig(data=str(path), out=str(tmp_path / "m"), targets="memgen", val_size=0)
    with pytest.raises(FlashmemError, match="line 1: MemGen's targets need GSM8K's rationales"):
        load_data(cfg)
