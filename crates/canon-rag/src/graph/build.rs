//! The graph: merged elements, hierarchical communities and one report per community.

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub name: String,
    pub kind: String,
    /// Distinct descriptions, in order of first appearance.
    pub descriptions: Vec<String>,
    /// Chunk ids the entity was found in.
    pub text_units: Vec<usize>,
    pub degree: usize,
    /// The descriptions summarised by a language model (`canon graph summarize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_summary: Option<String>,
}

/// `s` cut to at most `max_chars` bytes at a character boundary.
pub(super) fn cut(s: &str, max_chars: usize) -> String {
    s[..s.floor_char_boundary(max_chars.min(s.len()))].to_string()
}

impl Entity {
    /// The merged description: the model's summary when there is one, else the descriptions
    /// joined; at most `max_chars`.
    pub fn summary(&self, max_chars: usize) -> String {
        if let Some(t) = &self.llm_summary {
            return cut(t, max_chars);
        }
        let mut s = String::new();
        for d in &self.descriptions {
            if s.len() + d.len() + 2 > max_chars && !s.is_empty() {
                break;
            }
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(d);
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    pub source: usize,
    pub target: usize,
    pub descriptions: Vec<String>,
    /// Sum of the instances' strengths.
    pub weight: f64,
    pub text_units: Vec<usize>,
    /// The descriptions summarised by a language model (`canon graph summarize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_summary: Option<String>,
}

impl Relation {
    /// The model's summary when there is one, else the first description.
    pub fn description(&self) -> &str {
        self.llm_summary
            .as_deref()
            .or(self.descriptions.first().map(String::as_str))
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub cluster: usize,
    pub level: usize,
    pub title: String,
    /// The report text: entity summaries and relationship findings, most prominent first.
    pub text: String,
    /// Sum of member degrees (the order reports are listed in).
    pub rank: f64,
    /// Chunk ids behind the community's elements, most frequent first.
    pub text_units: Vec<usize>,
    /// The report a language model wrote (`canon graph summarize`); `title` and `text` then
    /// render it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::graph_llm::LlmReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeGraph {
    pub format: String,
    pub version: u32,
    /// `fast` or the extracting model's id.
    pub extractor: String,
    pub chunks: usize,
    pub entities: Vec<Entity>,
    pub relations: Vec<Relation>,
    pub clusters: Vec<Cluster>,
    pub reports: Vec<Report>,
    pub stats: ExtractStats,
    /// [`chunks_fingerprint`] of the text units the graph was built over (checked at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_hash: Option<String>,
    /// How the graph was built, so `canon index update` can build it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<GraphRecipe>,
    /// The entity description embeddings' record (vectors in their own file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_embedding: Option<EntityEmbedding>,
    /// Row-major entity vectors (`entity_embedding`'s file, read at load).
    #[serde(skip)]
    pub entity_vectors: Vec<f32>,
}

/// Merges per-unit extractions: entities by exact upper-cased name (the first type seen wins;
/// descriptions deduplicated), relationships by unordered (source, target) with strengths added.
/// Noun phrases found in fewer than `min_np_units` units are dropped (with their edges).
pub fn merge(units: &[(usize, Extraction)], min_np_units: usize) -> (Vec<Entity>, Vec<Relation>) {
    let mut ents: Vec<Entity> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (u, ex) in units {
        for (n, t, d) in &ex.entities {
            let i = *by_name.entry(n.clone()).or_insert_with(|| {
                ents.push(Entity {
                    name: n.clone(),
                    kind: t.clone(),
                    descriptions: Vec::new(),
                    text_units: Vec::new(),
                    degree: 0,
                    llm_summary: None,
                });
                ents.len() - 1
            });
            let e = &mut ents[i];
            if !d.is_empty() && !e.descriptions.contains(d) {
                e.descriptions.push(d.clone());
            }
            if e.text_units.last() != Some(u) && !e.text_units.contains(u) {
                e.text_units.push(*u);
            }
        }
    }
    let keep: Vec<bool> = ents
        .iter()
        .map(|e| e.kind != "CONCEPT" || e.text_units.len() >= min_np_units)
        .collect();
    let mut rels: BTreeMap<(usize, usize), Relation> = BTreeMap::new();
    for (u, ex) in units {
        for (s, t, d, w) in &ex.relations {
            let (Some(&a), Some(&b)) = (by_name.get(s), by_name.get(t)) else {
                continue;
            };
            if a == b || !keep[a] || !keep[b] {
                continue;
            }
            let key = (a.min(b), a.max(b));
            let r = rels.entry(key).or_insert_with(|| Relation {
                source: key.0,
                target: key.1,
                descriptions: Vec::new(),
                weight: 0.0,
                text_units: Vec::new(),
                llm_summary: None,
            });
            r.weight += w;
            if !d.is_empty() && !r.descriptions.contains(d) {
                r.descriptions.push(d.clone());
            }
            if !r.text_units.contains(u) {
                r.text_units.push(*u);
            }
        }
    }
    // Renumber the kept entities.
    let mut new_id = vec![usize::MAX; ents.len()];
    let mut kept = Vec::new();
    for (i, e) in ents.into_iter().enumerate() {
        if keep[i] {
            new_id[i] = kept.len();
            kept.push(e);
        }
    }
    let mut rels: Vec<Relation> = rels
        .into_values()
        .map(|mut r| {
            r.source = new_id[r.source];
            r.target = new_id[r.target];
            r
        })
        .collect();
    for r in &rels {
        kept[r.source].degree += 1;
        kept[r.target].degree += 1;
    }
    rels.sort_by_key(|r| (r.source, r.target));
    (kept, rels)
}

/// Rough token count for report budgets (words × 4/3).
pub fn approx_tokens(s: &str) -> usize {
    (s.split_whitespace().count() * 4).div_ceil(3)
}

/// An extractive community report: relationships in decreasing prominence (combined degree of
/// source and target), each with its description and the entities' summaries, added while they
/// fit `budget` tokens (by `count`).
pub fn build_report(
    cluster: &Cluster,
    ents: &[Entity],
    rels: &[Relation],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Report {
    build_report_in(
        cluster,
        ents,
        rels,
        &incident(ents.len(), rels),
        budget,
        count,
    )
}

/// For each entity, the relations (indices into `rels`) that touch it.
pub fn incident(entities: usize, rels: &[Relation]) -> Vec<Vec<usize>> {
    let mut inc = vec![Vec::new(); entities];
    for (i, r) in rels.iter().enumerate() {
        for e in [r.source, r.target] {
            if let Some(v) = inc.get_mut(e)
                && v.last() != Some(&i)
            {
                v.push(i);
            }
        }
    }
    inc
}

/// Every cluster's [`build_report`], the relations' incidence computed once: the work grows with
/// the members' degrees, not with the number of clusters times the number of relations.
pub fn build_reports(
    clusters: &[Cluster],
    ents: &[Entity],
    rels: &[Relation],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Report> {
    let inc = incident(ents.len(), rels);
    clusters
        .iter()
        .map(|c| build_report_in(c, ents, rels, &inc, budget, count))
        .collect()
}

/// [`build_report`] with the incidence lists of [`incident`].
pub fn build_report_in(
    cluster: &Cluster,
    ents: &[Entity],
    rels: &[Relation],
    incident: &[Vec<usize>],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Report {
    let members: BTreeSet<usize> = cluster.nodes.iter().copied().collect();
    // The relations with both ends in the cluster, in `rels` order (as a scan would find them).
    let mut ids: Vec<usize> = cluster
        .nodes
        .iter()
        .filter_map(|&e| incident.get(e))
        .flatten()
        .copied()
        .filter(|&i| members.contains(&rels[i].source) && members.contains(&rels[i].target))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut inner: Vec<&Relation> = ids.iter().map(|&i| &rels[i]).collect();
    inner.sort_by(|a, b| {
        let da = ents[a.source].degree + ents[a.target].degree;
        let db = ents[b.source].degree + ents[b.target].degree;
        db.cmp(&da)
            .then(a.source.cmp(&b.source))
            .then(a.target.cmp(&b.target))
    });
    let mut top: Vec<usize> = cluster.nodes.clone();
    top.sort_by(|&a, &b| ents[b].degree.cmp(&ents[a].degree).then(a.cmp(&b)));
    let title = top
        .iter()
        .take(3)
        .map(|&i| ents[i].name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let head = format!("Community {}: {title}\n", cluster.id);
    let mut text = head.clone();
    let mut used = count(&head);
    let mut described: BTreeSet<usize> = BTreeSet::new();
    let push = |line: String, text: &mut String, used: &mut usize| -> bool {
        let c = count(&line);
        if *used + c > budget {
            return false;
        }
        *used += c;
        text.push_str(&line);
        true
    };
    'outer: for r in &inner {
        for e in [r.source, r.target] {
            if described.insert(e) {
                let s = ents[e].summary(300);
                if !s.is_empty()
                    && !push(format!("- {}: {s}\n", ents[e].name), &mut text, &mut used)
                {
                    break 'outer;
                }
            }
        }
        let d = r.description().to_string();
        let line = format!(
            "- {} — {}{}\n",
            ents[r.source].name,
            ents[r.target].name,
            if d.is_empty() {
                String::new()
            } else {
                format!(": {d}")
            }
        );
        if !push(line, &mut text, &mut used) {
            break;
        }
    }
    for &e in &top {
        if described.insert(e) {
            let s = ents[e].summary(300);
            if !s.is_empty() && !push(format!("- {}: {s}\n", ents[e].name), &mut text, &mut used) {
                break;
            }
        }
    }
    let mut freq: HashMap<usize, usize> = HashMap::new();
    for &e in &cluster.nodes {
        for &u in &ents[e].text_units {
            *freq.entry(u).or_default() += 1;
        }
    }
    let mut units: Vec<(usize, usize)> = freq.into_iter().collect();
    units.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Report {
        cluster: cluster.id,
        level: cluster.level,
        title,
        text,
        rank: cluster.nodes.iter().map(|&e| ents[e].degree as f64).sum(),
        text_units: units.into_iter().map(|u| u.0).collect(),
        llm: None,
    }
}

/// Builds the graph from extractions: merge, hierarchical Leiden, reports.
pub fn build_graph(
    extractor: &str,
    chunks: usize,
    units: &[(usize, Extraction)],
    stats: ExtractStats,
    max_cluster_size: usize,
    report_budget: usize,
    min_np_units: usize,
) -> KnowledgeGraph {
    let (entities, relations) = merge(units, min_np_units);
    let mut g = Graph::new(entities.len());
    for r in &relations {
        g.add_edge(r.source, r.target, r.weight);
    }
    let clusters: Vec<Cluster> =
        hierarchical_leiden(&g, max_cluster_size, &LeidenConfig::default())
            .into_iter()
            .filter(|c| c.nodes.len() > 1 || !g.adj[c.nodes[0]].is_empty())
            .collect();
    let reports = build_reports(
        &clusters,
        &entities,
        &relations,
        report_budget,
        &approx_tokens,
    );
    KnowledgeGraph {
        format: GRAPH_FORMAT.into(),
        version: GRAPH_VERSION,
        extractor: extractor.into(),
        chunks,
        entities,
        relations,
        clusters,
        reports,
        stats,
        chunks_hash: None,
        recipe: None,
        entity_embedding: None,
        entity_vectors: Vec::new(),
    }
}

impl KnowledgeGraph {
    /// Writes the entity vector file (if any) and then `graph.json` into the index folder, each
    /// atomically, and removes vector files no longer named.
    pub fn save(&self, index_dir: &Path) -> Result<()> {
        let keep = self.write_entity_vectors(index_dir)?;
        let p = index_dir.join(GRAPH_FILE);
        let s = serde_json::to_string(self).map_err(|e| RagError::Invalid(e.to_string()))?;
        canon_fs::write_atomic(&p, s.as_bytes()).map_err(|e| io_err(&p, e))?;
        remove_other_vector_files(index_dir, keep.as_deref());
        Ok(())
    }

    /// Reads `graph.json` (and its entity vectors), checking format and version only.
    pub fn load_unchecked(index_dir: &Path) -> Result<KnowledgeGraph> {
        let p = index_dir.join(GRAPH_FILE);
        if !p.exists() {
            return Err(RagError::Invalid(format!(
                "expected a graph in {} (run `canon graph build --index {}`), found none",
                index_dir.display(),
                index_dir.display()
            )));
        }
        let t = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        let mut g: KnowledgeGraph = serde_json::from_str(&t).map_err(|e| {
            RagError::Invalid(format!(
                "expected {GRAPH_FORMAT} JSON in {}, found {e}",
                p.display()
            ))
        })?;
        if g.format != GRAPH_FORMAT || g.version != GRAPH_VERSION {
            return Err(RagError::Invalid(format!(
                "expected graph format {GRAPH_FORMAT} version {GRAPH_VERSION}, found {} version {}",
                g.format, g.version
            )));
        }
        g.read_entity_vectors(index_dir)?;
        Ok(g)
    }

    /// Reads `graph.json`, checking format, version and that it was built over `chunks` (their
    /// count, and their fingerprint when the graph records one).
    pub fn load(index_dir: &Path, chunks: &[Chunk]) -> Result<KnowledgeGraph> {
        let g = Self::load_unchecked(index_dir)?;
        if !g.matches_chunks(chunks) {
            return Err(RagError::Invalid(format!(
                "expected a graph built over this index's {} chunks, found one over {} other chunks (rebuild it with `canon graph build`, or `canon index update`)",
                chunks.len(),
                g.chunks
            )));
        }
        Ok(g)
    }

    /// Whether the graph was built over exactly these text units.
    pub fn matches_chunks(&self, chunks: &[Chunk]) -> bool {
        self.chunks == chunks.len()
            && self
                .chunks_hash
                .as_ref()
                .is_none_or(|h| *h == chunks_fingerprint(chunks))
    }

    pub fn levels(&self) -> usize {
        self.clusters.iter().map(|c| c.level + 1).max().unwrap_or(0)
    }
}
