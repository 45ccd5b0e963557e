//! `canon agent webgpt`: WebGPT's browsing task on the encyclopedia (`canon_agent::webgpt`):
//! oracle demonstrations for behaviour cloning, the evaluation of a model that browses, and the
//! reward model for best-of-n (`canon_agent::webgpt_rm`). The settings, files and report are
//! `canon_agent::opts::webgpt`.

use canon_agent::browse_run::EngineCommandLm;
use canon_agent::opts::webgpt::ScorerArg;
pub use canon_agent::opts::webgpt::WebgptArgs;
use canon_agent::webgpt::{self, Outcome};
use canon_agent::webgpt_rm::{self, FitConfig, HiddenStates, RewardModel, RewardScorer};
use canon_models::LoadedLm;

/// The model whose frozen features a reward model reads: `model` without the `--lora` adapter
/// (the adapter belongs to the policy).
fn feature_model(model: &str, ctx: &crate::Ctx) -> anyhow::Result<LoadedLm> {
    let mut loader = ctx.loader();
    loader.lora = None;
    Ok(loader.lm(model)?)
}

/// Browses and samples answers for every picked question (scored by the heuristic).
fn sample(
    a: &WebgptArgs,
    t: &canon_agent::opts::webgpt::WebgptTask,
    model: &str,
    ctx: &crate::Ctx,
) -> anyhow::Result<Vec<Outcome>> {
    let lm = crate::model_gen::load_lm(model, ctx)?;
    let chat = if a.answer_chat {
        Some(lm.chat_template.clone().ok_or_else(|| {
            anyhow::anyhow!("--answer-chat: expected a chat template in {model}, found none")
        })?)
    } else {
        None
    };
    let engine = canon_infer::Engine::start(
        lm,
        canon_infer::EngineConfig {
            slots: a.n_max().min(16),
            ..Default::default()
        },
    )?;
    let mut lm = EngineCommandLm::new(&engine)?;
    let bar = "webgpt [{bar:30}] {pos}/{len} questions ({eta})";
    let pb = crate::progress::bar(false, t.questions.len() as u64, bar);
    let mut outcomes = Vec::new();
    for q in &t.questions {
        outcomes.push(webgpt::evaluate_one(
            &t.site,
            q,
            a.eval_config(t),
            &mut lm,
            &engine,
            chat.as_ref(),
        )?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    engine.shutdown();
    Ok(outcomes)
}

pub fn run(a: WebgptArgs, ctx: &crate::Ctx) -> anyhow::Result<()> {
    let t = a.task()?;
    if a.oracle {
        print!("{}", a.write_oracle(&t)?);
        return Ok(());
    }
    let model = a.model.as_deref().unwrap_or_default();
    if let Some(from) = &a.train_reward_model {
        let outcomes = a.read_outcomes(from)?;
        let lm = feature_model(model, ctx)?;
        let mut feats = HiddenStates::new(lm.model.as_ref(), &lm.tokenizer)?;
        let bar = "reward model features [{bar:30}] {pos}/{len} questions ({eta})";
        let pb = crate::progress::bar(false, outcomes.len() as u64, bar);
        let trained = webgpt_rm::train(
            &outcomes,
            &mut feats,
            model,
            FitConfig::default(),
            |i, _| pb.set_position(i as u64),
        )?;
        pb.finish_and_clear();
        print!("{}", a.write_reward_model(&trained)?);
        return Ok(());
    }
    let mut outcomes = match &a.rescore {
        Some(dir) => a.read_outcomes(dir)?,
        None => sample(&a, &t, model, ctx)?,
    };
    let mut heuristic = outcomes.clone();
    webgpt_rm::rescore(&mut heuristic, &mut webgpt_rm::Heuristic)?;
    let mut scored = vec![("heuristic", heuristic)];
    if let Some(dir) = &a.reward_model {
        let rm = RewardModel::load(dir)?;
        if rm.model != model {
            anyhow::bail!(
                "the reward model in {} reads the features of {:?}: expected --model {:?}, found {model:?}",
                dir.display(),
                rm.model,
                rm.model
            );
        }
        let lm = feature_model(model, ctx)?;
        let mut scorer = RewardScorer {
            head: rm.head,
            features: HiddenStates::new(lm.model.as_ref(), &lm.tokenizer)?,
        };
        let bar = "reward model [{bar:30}] {pos}/{len} questions ({eta})";
        let pb = crate::progress::bar(false, outcomes.len() as u64, bar);
        for o in outcomes.chunks_mut(1) {
            webgpt_rm::rescore(o, &mut scorer)?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        scored.push(("reward model", outcomes));
    }
    if a.scorer == ScorerArg::RewardModel {
        scored.reverse();
    }
    print!(
        "{}",
        a.write_results(model, ctx.lora.as_deref(), t.style, &scored)?
    );
    Ok(())
}
