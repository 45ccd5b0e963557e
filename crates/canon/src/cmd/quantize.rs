//! `canon quantize`: re-quantize a GGUF model's weights to NF4 (paper 27), LLM.int8() (paper 22) or
//! Q8_0, writing a GGUF file that `--model OUT` loads (`canon_models::gguf_out::requantize`; its
//! documentation describes the file format). The settings and the run are
//! `canon_runs::quantize_opts`.

pub use canon_runs::quantize_opts::QuantizeArgs;

use crate::Ctx;

pub fn run(args: QuantizeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let path = args.input(ctx.progress())?;
    if let Some(note) = args.note() {
        eprintln!("{note}");
    }
    println!("{}", args.quantize(&path)?);
    Ok(())
}
