//! The console's pages: server-rendered HTML (maud escapes every value),
//! in Chinese by default and in English by toggle. Reading needs no
//! script; signing does (the member's key stays in the browser).

use maud::{DOCTYPE, Markup, html};

use kexin_engine::gate::Cell;
use kexin_engine::node::{Outcome, Status};

use super::svg;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// From the `kexin_lang` cookie's value: English when asked for,
    /// Chinese otherwise (the data space is in Hubei).
    pub fn from_cookie(v: Option<&str>) -> Lang {
        if v == Some("en") { Lang::En } else { Lang::Zh }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    fn other(self) -> (&'static str, &'static str) {
        match self {
            Lang::Zh => ("en", "English"),
            Lang::En => ("zh", "中文"),
        }
    }
}

/// Every text of the console: (key, Chinese, English).
const TEXT: &[(&str, &str, &str)] = &[
    ("title", "可信数据空间控制台", "Trusted data space console"),
    ("node", "节点", "Node"),
    ("sign_in", "登录", "Sign in"),
    ("sign_out", "退出", "Sign out"),
    ("member", "成员名", "Member name"),
    ("key_file", "密钥文件", "Key file"),
    (
        "sign_in_help",
        "用您的成员密钥证明身份：密钥文件只在本浏览器内读取和使用，不会上传。",
        "Prove who you are with your member key: the key file is read and used in this browser only, never uploaded.",
    ),
    (
        "token",
        "或粘贴 `kexin id login` 生成的登录令牌（5 分钟内有效，只能用一次）",
        "Or paste a sign-in token made by `kexin id login` (valid 5 minutes, once)",
    ),
    ("scenes", "使用场景", "Scenes"),
    ("scene", "场景", "Scene"),
    ("purpose", "目的", "Purpose"),
    ("purpose_code", "目的代码", "Purpose code"),
    ("requester", "申请方", "Requester"),
    ("validity", "有效期", "Validity"),
    ("consent_needed", "需要同意", "Consent required"),
    ("yes", "是", "yes"),
    ("no", "否", "no"),
    ("my_consent", "我的授权", "My consent"),
    ("granted_until", "已授权，至", "granted until"),
    ("granted", "已授权", "granted"),
    ("revoked", "已撤回", "revoked"),
    ("none", "无", "none"),
    (
        "not_needed",
        "无需同意（医院的法定依据）",
        "not needed (the hospitals' legal basis)",
    ),
    ("grant", "授权", "Grant"),
    ("revoke", "撤回", "Revoke"),
    ("until", "截止日期（可选）", "Until (optional)"),
    ("timeline", "使用记录", "Timeline"),
    (
        "timeline_help",
        "您的记录被使用的每一次（已发布、待审核），您贡献的数据，以及您自己的授权记录。",
        "Every use of your records (released, held), your contributions and your own consent receipts.",
    ),
    ("when", "时间", "When"),
    ("what", "事件", "What"),
    ("researcher", "研究者", "Researcher"),
    ("decision", "结果", "Decision"),
    ("entry", "审计条目", "Audit entry"),
    ("use_of_records", "使用了您的记录", "used your records"),
    ("disputed", "争议", "dispute"),
    ("receipt", "授权记录", "consent receipt"),
    ("contribution", "我贡献的数据", "my contribution"),
    ("airlock", "待审核结果", "Held results"),
    (
        "airlock_help",
        "只列出被扣留的聚合结果，以及扣留它们的场景和规则。",
        "Only the held aggregates, with the scene and rule that held them.",
    ),
    ("approvals", "批准数", "Approvals"),
    ("rule", "规则", "Rule"),
    (
        "held_by_scene",
        "场景规定发布前须经审核",
        "the scene releases only after review",
    ),
    (
        "held_by_contract",
        "合同规定发布前须经审核",
        "the contract releases only after review",
    ),
    ("approvers", "位数据持有方批准", "data holders approve"),
    ("approve", "批准", "Approve"),
    ("reject", "拒绝", "Reject"),
    ("fetch", "取回", "Fetch"),
    ("digest", "摘要", "Digest"),
    ("state", "状态", "State"),
    ("contracts", "合同", "Contracts"),
    ("contract", "合同", "Contract"),
    ("queries_left", "剩余查询", "Queries left"),
    ("agree", "同意", "Agree"),
    ("finalize", "确认", "Finalize"),
    ("terminate", "终止", "Terminate"),
    ("offer", "提出合同", "Offer a contract"),
    ("max_queries", "最多查询次数", "Most queries"),
    ("valid_to", "有效至", "Valid to"),
    ("udfs", "已批准的模块", "Approved modules"),
    ("udfs_waiting", "待批准的模块", "Modules awaiting approval"),
    ("submitted_by", "提交人", "Submitted by"),
    ("functions", "函数", "Functions"),
    ("approved_by", "批准人", "Approved by"),
    ("checkpoint", "审计检查点", "Audit checkpoint"),
    ("verify", "验证审计日志", "Verify the audit log"),
    ("verified", "审计日志已验证", "The audit log verifies"),
    (
        "not_verified",
        "审计日志验证失败",
        "The audit log does NOT verify",
    ),
    ("entries", "条目", "entries"),
    ("root", "根哈希", "root"),
    ("budgets", "隐私预算", "Privacy budgets"),
    ("spent", "已用 ε", "ε spent"),
    ("remaining", "剩余 ε", "ε left"),
    ("total", "总 ε", "ε total"),
    ("spending", "ε 使用随时间的变化", "ε spent over time"),
    ("receipts", "我的回执", "My receipts"),
    (
        "receipts_help",
        "每个结果的审计条目；检查点签名覆盖这些条目。",
        "The audit entry of each result; the checkpoint's signature covers them.",
    ),
    ("query", "提交查询", "Submit a query"),
    ("sql", "SQL", "SQL"),
    ("run", "运行", "Run"),
    ("result", "结果", "Result"),
    (
        "chart",
        "发布结果（误差线为 95% 区间）",
        "Released result (error bars: 95% intervals)",
    ),
    ("explanation", "说明", "Explanation"),
    ("confirm", "确认并签名", "Confirm and sign"),
    (
        "confirm_help",
        "您将用自己的密钥签署以下内容，与命令行或接口发出的请求完全相同。",
        "You are about to sign exactly this with your key, the same request the CLI or the API sends.",
    ),
    ("sign_send", "签名并发送", "Sign and send"),
    ("back", "返回", "Back"),
    ("refused", "已拒绝", "Refused"),
    ("done", "完成", "Done"),
    (
        "no_key",
        "本浏览器中没有您的密钥：请重新登录。",
        "Your key is not in this browser: sign in again.",
    ),
    ("no_file", "请选择密钥文件。", "Choose your key file."),
    (
        "other_member",
        "密钥文件属于另一个成员。",
        "The key file is another member's.",
    ),
    (
        "needs_script",
        "签名需要 JavaScript（脚本由本节点提供）。",
        "Signing needs JavaScript (served by this node).",
    ),
    ("nothing", "暂无。", "Nothing yet."),
    ("role_individual", "个人", "Individual"),
    ("role_holder", "数据持有方", "Data holder"),
    ("role_researcher", "研究者", "Researcher"),
    ("role_operator", "运营方", "Operator"),
    ("rows", "行", "rows"),
    ("suppressed", "被抑制的组", "suppressed groups"),
];

/// The text `key` in `lang` (the key itself when missing: a test finds it).
pub fn t(lang: Lang, key: &str) -> &'static str {
    for (k, zh, en) in TEXT {
        if *k == key {
            return match lang {
                Lang::Zh => zh,
                Lang::En => en,
            };
        }
    }
    "?"
}

/// Who is signed in, for the page header and forms.
pub struct Who<'a> {
    pub member: &'a str,
    pub role: &'a str,
    pub csrf: &'a str,
}

/// A whole page.
pub fn page(lang: Lang, node: &str, who: Option<&Who<'_>>, body: Markup) -> Markup {
    let (other, other_name) = lang.other();
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (t(lang, "title")) " · " (node) }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    h1 { (t(lang, "title")) " · " (t(lang, "node")) " " (node) }
                    nav aria-label="console" {
                        @if let Some(w) = who {
                            span { (w.member) " (" (t(lang, &format!("role_{}", w.role))) ")" }
                            form.inline method="post" action="/console/logout" data-sign-out {
                                input type="hidden" name="csrf" value=(w.csrf);
                                button.secondary type="submit" { (t(lang, "sign_out")) }
                            }
                        }
                        a href=(format!("/console/lang?to={other}")) lang=(if other == "en" { "en" } else { "zh-CN" }) { (other_name) }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page.
pub fn sign_in(lang: Lang, space: &str, node: &str, error: Option<&str>) -> Markup {
    html! {
        section {
            h2 { (t(lang, "sign_in")) }
            p.note { (t(lang, "sign_in_help")) }
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            form method="post" action="/console/login" data-sign-in
                data-space=(space) data-node=(node)
                data-no-file=(t(lang, "no_file")) data-other-member=(t(lang, "other_member")) {
                p {
                    label for="member" { (t(lang, "member")) }
                    br;
                    input id="member" name="member" autocomplete="username";
                }
                p {
                    label for="keyfile" { (t(lang, "key_file")) }
                    br;
                    // No name: the file is never part of the form's body.
                    input id="keyfile" type="file" accept=".key,application/json";
                }
                details {
                    summary { (t(lang, "token")) }
                    label for="proof" { (t(lang, "token")) }
                    textarea id="proof" name="proof" {}
                }
                p.error data-error hidden {}
                button type="submit" { (t(lang, "sign_in")) }
            }
        }
    }
}

/// A refusal: the fixed code and the rule that fired (never data).
pub fn refusal(lang: Lang, code: &str, rule: &str, audit_seq: Option<u64>) -> Markup {
    html! {
        section {
            h2.refused { (t(lang, "refused")) }
            p role="alert" { code { (code) } ": " (rule) }
            @if let Some(s) = audit_seq {
                p { (t(lang, "entry")) " #" (s) }
            }
            p { a href="/console/home" { (t(lang, "back")) } }
        }
    }
}

/// The confirmation of an action: exactly what will be signed.
pub fn confirm(
    lang: Lang,
    who: &Who<'_>,
    kind: &str,
    summary: &[(String, String)],
    tag: &str,
    body: &str,
) -> Markup {
    html! {
        section {
            h2 { (t(lang, "confirm")) }
            p.note { (t(lang, "confirm_help")) }
            table {
                @for (k, v) in summary {
                    tr { th scope="row" { (k) } td { (v) } }
                }
            }
            pre.body { (tag) "\n" (body) }
            form method="post" action="/console/act" data-sign data-member=(who.member)
                data-no-key=(t(lang, "no_key")) {
                input type="hidden" name="csrf" value=(who.csrf);
                input type="hidden" name="kind" value=(kind);
                input type="hidden" name="tag" value=(tag);
                input type="hidden" name="body" value=(body);
                input type="hidden" name="signature" value="";
                p.error data-error hidden {}
                noscript { p.note { (t(lang, "needs_script")) } }
                button type="submit" id="sign-send" { (t(lang, "sign_send")) }
                " "
                a href="/console/home" { (t(lang, "back")) }
            }
        }
    }
}

/// A small form that prepares an action (POST, with the CSRF token).
pub fn action_button(
    who: &Who<'_>,
    action: &str,
    fields: &[(&str, String)],
    label: &str,
    class: &str,
) -> Markup {
    html! {
        form.inline method="post" action="/console/prepare" {
            input type="hidden" name="csrf" value=(who.csrf);
            input type="hidden" name="action" value=(action);
            @for (k, v) in fields {
                input type="hidden" name=(k) value=(v);
            }
            button class=(class) type="submit" { (label) }
        }
    }
}

/// A cell as text.
pub fn cell(c: &Cell) -> String {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => String::new(),
        Ok(v) => v.to_string(),
        Err(_) => String::new(),
    }
}

/// A query's outcome: status, the released table, a bar chart of its
/// first numeric column (with DP intervals as error bars), the
/// explanation and the audit entry.
pub fn outcome(lang: Lang, o: &Outcome) -> Markup {
    let released = o.status == Status::Released;
    let chart = released.then(|| chart_of(o)).flatten();
    html! {
        section {
            h2 { (t(lang, "result")) }
            @match o.status {
                Status::Released => p.released { "released" },
                Status::Held => p.held { "held" },
                Status::Refused => p.refused { "refused" },
            }
            @if let (Some(code), Some(rule)) = (&o.code, &o.rule) {
                p role="alert" { code { (code) } ": " (rule) }
            }
            @if released {
                table {
                    thead { tr { @for c in &o.columns { th scope="col" { (c) } } } }
                    tbody {
                        @for r in &o.rows {
                            tr { @for c in r { td { (cell(c)) } } }
                        }
                    }
                }
                p.note { (o.rows.len()) " " (t(lang, "rows")) "; " (o.suppressed_groups) " " (t(lang, "suppressed")) }
            }
            @if let Some(svg) = chart {
                figure {
                    (svg)
                    figcaption { (t(lang, "chart")) }
                }
            }
            @if let Some(s) = o.audit_seq {
                p { (t(lang, "entry")) " #" (s) }
            }
            @if !o.explanation.is_empty() {
                details {
                    summary { (t(lang, "explanation")) }
                    ul { @for e in &o.explanation { li { (e) } } }
                }
            }
            p { a href="/console/home" { (t(lang, "back")) } }
        }
    }
}

/// The bar chart of a released outcome: the first column's values as
/// labels, the first numeric column (after it) as bars, and its DP
/// intervals where the release has them.
fn chart_of(o: &Outcome) -> Option<Markup> {
    let first = o.rows.first()?;
    let col = (1..first.len()).find(|&i| matches!(first[i], Cell::Int(_) | Cell::Float(_)))?;
    let bars: Vec<svg::Bar> = o
        .rows
        .iter()
        .map(|r| svg::Bar {
            label: cell(&r[0]),
            value: match r.get(col) {
                Some(Cell::Int(v)) => *v as f64,
                Some(Cell::Float(v)) => *v,
                _ => 0.0,
            },
            interval: None,
        })
        .enumerate()
        .map(|(i, mut b)| {
            b.interval =
                o.dp.as_ref()
                    .and_then(|d| d.accuracy.get(i))
                    .and_then(|row| row.get(col).cloned().flatten())
                    .map(|a| a.interval);
            b
        })
        .collect();
    Some(svg::bars(&o.columns[col], &o.columns[col], &bars))
}

/// Preformatted JSON (a held result that is not an outcome).
pub fn json(v: &serde_json::Value) -> Markup {
    html! { pre.body { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// An empty list's note.
pub fn nothing(lang: Lang) -> Markup {
    html! { p.note { (t(lang, "nothing")) } }
}
