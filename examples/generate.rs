//! # Generating text with the default model
//!
//! Loads SmolLM2-135M-Instruct (the Q4_1 GGUF that `scripts/fetch-model.sh` puts in
//! `~/.cache/dear/models`), wraps a question in the model's chat template and streams
//! the greedy answer token by token.
//!
//! ```text
//! bash scripts/fetch-model.sh
//! cargo run --example generate -- "Why is the sky blue?"
//! ```

use std::io::Write;

use dear::dear_core::{default_model_path, GenerateOptions, LanguageModel, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".to_string());

    // A GGUF file, a Hugging Face directory or a hub id all load the same way.
    let model = default_model_path();
    let lm = LanguageModel::load(model, &LoadOptions::default())?;

    // The chat template renders the conversation exactly as transformers'
    // `apply_chat_template(..., add_generation_prompt=True)` does.
    let prompt = lm.chat_prompt(&question)?;

    // Greedy decoding, stopping at the end-of-turn token; tokens are streamed as
    // they are chosen (return `false` from the callback to stop early).
    let options = GenerateOptions::default().with_max_new_tokens(64);
    let mut generated = Vec::new();
    let mut printed = 0;
    let answer = lm.generate(&prompt, &options, &mut |token| {
        generated.push(token);
        if let Ok(text) = lm.tokenizer().decode(&generated, true) {
            if text.len() > printed && text.is_char_boundary(printed) {
                print!("{}", &text[printed..]);
                let _ = std::io::stdout().flush();
                printed = text.len();
            }
        }
        true
    })?;
    println!("\n[{} tokens, {:?}]", answer.tokens.len(), answer.finish);
    Ok(())
}
