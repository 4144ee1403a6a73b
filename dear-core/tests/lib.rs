//! dear-core's integration tests: one binary, one module per area.

mod common;
mod device;
mod errors;
mod gguf;
mod hub;
mod kernels;
mod listwise;
mod listwise_prompt;
mod llama;
mod lora;
mod pipeline;
mod props;
mod smollm2;
mod tokenizer;
