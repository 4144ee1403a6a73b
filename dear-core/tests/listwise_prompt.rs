//! DeAR's listwise prompts (`rankllm` and `plain`) against the goldens written by
//! `golden/make_listwise_golden.py` (transformers 5.23 + jinja2, SmolLM2's GGUF).

use std::path::PathBuf;

use dear_core::{
    listwise_passage_text, listwise_prompt_ids, Batch, ChatMessage, ChatTemplate, GenerateOptions,
    LanguageModel, ListwisePrompt, Outputs, Passage,
};
use serde_json::{json, Value};

use crate::common::{default_model, TestResult};

const PROMPTS: [ListwisePrompt; 2] = [ListwisePrompt::RankLlm, ListwisePrompt::Plain];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden() -> Value {
    let path = golden_dir().join("listwise/smollm2.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {}: {e}", path.display()))
}

fn cases(golden: &Value) -> &[Value] {
    golden["cases"].as_array().expect("cases")
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string"))
}

fn passages(case: &Value) -> Vec<Passage> {
    case["passages"]
        .as_array()
        .expect("passages")
        .iter()
        .map(|p| {
            let passage = Passage::new(str_of(&p["text"], "text"));
            match p["title"].as_str() {
                Some(title) => passage.with_title(title),
                None => passage,
            }
        })
        .collect()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage::new(str_of(&m["role"], "role"), str_of(&m["content"], "content")))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// The messages the reference builds, from the passages' titles and texts.
fn our_messages(prompt: ListwisePrompt, case: &Value) -> Vec<ChatMessage> {
    let texts: Vec<String> = passages(case).iter().map(listwise_passage_text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    prompt.messages(str_of(&case["query"], "query"), &refs)
}

#[test]
fn messages_equal_the_reference() {
    let golden = golden();
    for case in cases(&golden) {
        let name = str_of(&case["name"], "name");
        let texts: Vec<String> = passages(case).iter().map(listwise_passage_text).collect();
        let expected: Vec<&str> = case["contents"]
            .as_array()
            .expect("contents")
            .iter()
            .map(|c| str_of(c, "content"))
            .collect();
        assert_eq!(texts, expected, "{name}: passage texts");
        for prompt in PROMPTS {
            assert_eq!(
                our_messages(prompt, case),
                messages(&case[prompt.name()]["messages"]),
                "{name} / {prompt}"
            );
        }
    }
}

#[test]
fn rendered_prompts_and_ids_equal_transformers() -> TestResult {
    let golden = golden();
    let lm = default_model();
    let template = lm.tokenizer().chat_template().ok_or("no chat template")?;
    for case in cases(&golden) {
        let name = str_of(&case["name"], "name");
        let query = str_of(&case["query"], "query");
        for prompt in PROMPTS {
            let expected = &case[prompt.name()];
            let rendered = template.render(&our_messages(prompt, case), true)?;
            assert_eq!(
                rendered,
                str_of(&expected["rendered"], "rendered"),
                "{name} / {prompt}: rendered text"
            );
            let got = listwise_prompt_ids(&lm, prompt, query, &passages(case))?;
            assert_eq!(got, ids(&expected["ids"]), "{name} / {prompt}: ids");
        }
    }
    Ok(())
}

#[test]
fn llama31_render_equals_jinja2() -> TestResult {
    let golden = golden();
    let expected = &golden["llama31"];
    let case = cases(&golden)
        .iter()
        .find(|c| c["name"] == expected["case"])
        .ok_or("llama31 case not found")?;
    let prompt: ListwisePrompt = str_of(&expected["prompt"], "prompt").parse()?;
    let source =
        std::fs::read_to_string(golden_dir().join("tokenizer/llama31_chat_template.jinja"))?;
    let template = ChatTemplate::new(
        &source,
        Some(str_of(&expected["bos_token"], "bos")),
        Some(str_of(&expected["eos_token"], "eos")),
    )?;
    let rendered = template.render_with(
        &our_messages(prompt, case),
        true,
        &json!({ "date_string": expected["date_string"] }),
    )?;
    assert_eq!(rendered, str_of(&expected["rendered"], "rendered"));
    Ok(())
}

/// Top-1 and top-2 logits (id, value) after `seq`.
fn top2(lm: &LanguageModel, seq: &[u32]) -> Result<[(u32, f32); 2], Box<dyn std::error::Error>> {
    let logits = lm
        .llama()
        .forward(
            &Batch::from_sequences(&[seq])?,
            &mut [],
            Outputs::last_logits(),
        )?
        .logits
        .ok_or("no logits")?
        .get(0)?
        .to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    Ok([
        (order[0] as u32, logits[order[0]]),
        (order[1] as u32, logits[order[1]]),
    ])
}

#[test]
fn greedy_continuation_equals_transformers() -> TestResult {
    let golden = golden();
    let expected = &golden["greedy"];
    let case = cases(&golden)
        .iter()
        .find(|c| c["name"] == expected["case"])
        .ok_or("greedy case not found")?;
    let prompt_kind: ListwisePrompt = str_of(&expected["prompt"], "prompt").parse()?;
    let max_new_tokens = expected["max_new_tokens"]
        .as_u64()
        .ok_or("max_new_tokens")? as usize;
    let want = ids(&expected["tokens"]);
    let lm = default_model();
    let prompt = listwise_prompt_ids(
        &lm,
        prompt_kind,
        str_of(&case["query"], "query"),
        &passages(case),
    )?;
    assert_eq!(prompt, ids(&case[prompt_kind.name()]["ids"]));
    let out = lm.generate(
        &prompt,
        &GenerateOptions::default().with_max_new_tokens(max_new_tokens),
        &mut |_| true,
    )?;
    if out.tokens != want {
        let pos = out
            .tokens
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(out.tokens.len().min(want.len()));
        let mut seq = prompt.clone();
        seq.extend_from_slice(&want[..pos]);
        let ours = top2(&lm, &seq)?;
        let reference_margin = expected["margins"].get(pos).and_then(Value::as_f64);
        panic!(
            "greedy continuation differs at position {pos} (of {} / {} tokens): ours {:?}, \
             transformers {:?}; our top-2 there {:?} (margin {}), transformers' margin {:?}",
            out.tokens.len(),
            want.len(),
            out.tokens.get(pos),
            want.get(pos),
            ours,
            ours[0].1 - ours[1].1,
            reference_margin,
        );
    }
    assert_eq!(
        lm.tokenizer().decode(&out.tokens, true)?,
        str_of(&expected["text"], "text")
    );
    Ok(())
}
