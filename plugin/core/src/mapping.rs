//! Mapping Microsoft users to switchboard users by email address.
//!
//! Explicit overrides (switchboard user → Microsoft user id or address) come first and take
//! both users out of address matching. Addresses are compared trimmed and case-insensitively.
//! A switchboard address is looked up among Microsoft users' `mail` first, then their
//! `proxyAddresses` `smtp:` aliases, then their `userPrincipalName` (the order is
//! configurable, and a source can be left out); the first source that knows the address
//! decides. An override that names nobody, or nobody unambiguously, is reported. Ambiguity is
//! never settled at random: an address carried by several Microsoft users, or several
//! switchboard users claiming one address or one Microsoft user, is reported as a conflict
//! and those users stay unmapped.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::model::{Conflict, ConflictKind, MappingOverride, MatchSource, SwitchboardUser};

/// A user id, shared: each Microsoft user's id is allocated once, by the directory, and every
/// map and set that holds the user (the mapping both ways, the shards, the subscriptions, the
/// presence records) holds a counted reference to that one string; likewise each mapped
/// switchboard user's id. At 100,000 users six copies of every id were a third of the heap.
pub type Id = Arc<str>;

/// A Microsoft user as `GET /users?$select=id,userPrincipalName,mail,proxyAddresses` returns
/// it (and as the stored directory holds it: the same JSON), kept compact: the whole directory
/// stays in memory, so only what matching and the users list read is kept, and a user's
/// addresses share one allocation.
///
/// The `smtp:` entries of `proxyAddresses` (`SMTP:primary`, `smtp:alias`) are kept; the others
/// (`SIP:`, `X500:`, ...) are dropped as they are read: nothing here uses them. Null is read as
/// none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphUser {
    /// Object id (GUID).
    pub id: Id,
    /// The UPN, then the mail, then each kept proxy address after a NUL; an empty one is
    /// `SMTP:` and the mail (the primary address, which nearly every user has: a copy of
    /// the mail, kept once).
    addresses: Box<str>,
    /// The UPN's and the mail's lengths, plus one (0: absent).
    lens: [u16; 2],
}

/// The JSON form of a [`GraphUser`].
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUserJson<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    user_principal_name: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    mail: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    proxy_addresses: Option<Vec<std::borrow::Cow<'a, str>>>,
}

impl GraphUser {
    /// A user with these addresses (`proxy_addresses` as Graph gives them).
    pub fn new<'a>(
        id: &str,
        user_principal_name: Option<&str>,
        mail: Option<&str>,
        proxy_addresses: impl IntoIterator<Item = &'a str>,
    ) -> GraphUser {
        // Longer than Graph allows (UPN 113, mail 256 characters): read as absent.
        fn fit(s: Option<&str>) -> Option<&str> {
            s.filter(|s| s.len() < usize::from(u16::MAX))
        }
        let (upn, mail) = (fit(user_principal_name), fit(mail));
        let mut addresses = String::with_capacity(upn.map_or(0, str::len) + mail.map_or(0, str::len));
        addresses.push_str(upn.unwrap_or(""));
        addresses.push_str(mail.unwrap_or(""));
        for p in proxy_addresses.into_iter().filter(|p| smtp_alias(p).is_some() && !p.contains('\0')) {
            addresses.push('\0');
            if mail.is_none() || p.strip_prefix("SMTP:") != mail {
                addresses.push_str(p);
            }
        }
        let len = |s: Option<&str>| s.map_or(0, |s| s.len() as u16 + 1);
        GraphUser { id: id.into(), addresses: addresses.into_boxed_str(), lens: [len(upn), len(mail)] }
    }
    /// User principal name.
    pub fn user_principal_name(&self) -> Option<&str> {
        let n = usize::from(self.lens[0]);
        (n > 0).then(|| &self.addresses[..n - 1])
    }
    /// Primary SMTP address.
    pub fn mail(&self) -> Option<&str> {
        let from = usize::from(self.lens[0].saturating_sub(1));
        let n = usize::from(self.lens[1]);
        (n > 0).then(|| &self.addresses[from..from + n - 1])
    }
    /// The `smtp:` entries of `proxyAddresses`, as Graph gave them.
    pub fn proxy_addresses(&self) -> impl Iterator<Item = Cow<'_, str>> {
        self.proxy_entries().map(|p| match p {
            "" => Cow::Owned(format!("SMTP:{}", self.mail().unwrap_or_default())),
            p => Cow::Borrowed(p),
        })
    }
    /// The addresses of the `smtp:` entries of `proxyAddresses` (either case), as given.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        // Every kept entry but the primary's begins with the five ASCII bytes of `smtp:`.
        self.proxy_entries().map(|p| if p.is_empty() { self.mail().unwrap_or_default() } else { &p[5..] })
    }
    /// The kept proxy addresses as stored ("": the primary).
    fn proxy_entries(&self) -> impl Iterator<Item = &str> {
        let from = usize::from(self.lens[0].saturating_sub(1)) + usize::from(self.lens[1].saturating_sub(1));
        self.addresses[from..].split('\0').skip(1)
    }
}

impl serde::Serialize for GraphUser {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        GraphUserJson {
            id: std::borrow::Cow::Borrowed(&self.id),
            user_principal_name: self.user_principal_name().map(std::borrow::Cow::Borrowed),
            mail: self.mail().map(std::borrow::Cow::Borrowed),
            proxy_addresses: Some(self.proxy_addresses().collect()),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for GraphUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = GraphUserJson::deserialize(d)?;
        Ok(GraphUser::new(
            &j.id,
            j.user_principal_name.as_deref(),
            j.mail.as_deref(),
            j.proxy_addresses.iter().flatten().map(|p| &**p),
        ))
    }
}

/// Normalises an address: trimmed, lower case (character by character, as
/// [`address_hash`] and [`is_address`] read it).
pub fn normalise(email: &str) -> String {
    folded(email).collect()
}

/// The characters of `raw` normalised: trimmed, each in lower case.
fn folded(raw: &str) -> impl Iterator<Item = char> + '_ {
    raw.trim().chars().flat_map(char::to_lowercase)
}

/// A 64-bit hash of `raw` normalised (see [`normalise`]), computed without normalising it
/// into a new string: a hash of the normalised characters, so an address that is ASCII (the
/// common case, lowered a byte at a time) and one that folds to the same characters hash
/// alike. The hash is fixed (FxHash: nothing here is a secret, and an [`Index`] never trusts
/// a hash): distinct addresses may share one, which [`Index`] lookups resolve by checking each
/// candidate.
pub fn address_hash(raw: &str) -> u64 {
    use std::hash::Hasher as _;
    let mut h = rustc_hash::FxHasher::default();
    let t = raw.trim();
    if t.is_ascii() {
        for b in t.bytes() {
            h.write_u32(u32::from(b.to_ascii_lowercase()));
        }
    } else {
        for c in t.chars().flat_map(char::to_lowercase) {
            h.write_u32(c as u32);
        }
    }
    h.finish()
}

/// Whether two raw addresses are one once normalised.
fn same_address(a: &str, b: &str) -> bool {
    let (ta, tb) = (a.trim(), b.trim());
    if ta.is_ascii() && tb.is_ascii() {
        return ta.eq_ignore_ascii_case(tb);
    }
    folded(a).eq(folded(b))
}

/// Whether `raw` is `address` (normalised) once normalised.
pub fn is_address(raw: &str, address: &str) -> bool {
    let t = raw.trim();
    if t.is_ascii() {
        // Lowered byte by byte it must be `address` exactly (an ASCII character never
        // lowers to a non-ASCII one, nor a non-ASCII one to ASCII here: `t` has none).
        return t.len() == address.len() && t.bytes().zip(address.bytes()).all(|(r, a)| r.to_ascii_lowercase() == a);
    }
    folded(raw).eq(address.chars())
}

/// The result of matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Microsoft user id → switchboard user id.
    pub by_microsoft: BTreeMap<Id, Id>,
    /// Switchboard user id → Microsoft user id (the same strings as `by_microsoft`'s).
    pub by_switchboard: BTreeMap<Id, Id>,
    /// Ambiguous addresses, sorted.
    pub conflicts: Vec<Conflict>,
}

/// What a [`MappingBuild`] found, told against the mapping in effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Built {
    /// A whole new mapping: the first build, or one that changes more pairs than a single
    /// call may apply.
    Whole(Mapping),
    /// What changes in the mapping in effect (the pairs that stay are not listed): building a
    /// second mapping of 100,000 pairs beside the first, to find a handful changed, was the
    /// largest part of an instance's memory after a resync.
    Change(MappingChange),
}

/// The pairs a new mapping drops and adds, against the mapping in effect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappingChange {
    /// (Microsoft user, switchboard user) pairs in effect that go, by switchboard user id.
    pub removed: Vec<(Id, Id)>,
    /// (Microsoft user, switchboard user) pairs that come, in switchboard order.
    pub added: Vec<(Id, Id)>,
    /// Every conflict of the new matching (they replace the ones in effect).
    pub conflicts: Vec<Conflict>,
}

impl MappingChange {
    /// Makes `mapping` (the one the change was told against) the new mapping: the pairs that
    /// go go first, so that a user who moves between pairs is found once in each map.
    pub fn apply_to(&mut self, mapping: &mut Mapping) {
        for (ms, sb) in &self.removed {
            mapping.by_microsoft.remove(ms);
            mapping.by_switchboard.remove(sb);
        }
        for (ms, sb) in &self.added {
            mapping.by_microsoft.insert(ms.clone(), sb.clone());
            mapping.by_switchboard.insert(sb.clone(), ms.clone());
        }
        mapping.conflicts = std::mem::take(&mut self.conflicts);
    }
}

/// The default match order: mail, then `smtp:` proxy addresses, then UPN.
pub const DEFAULT_ORDER: [MatchSource; 3] = [MatchSource::Mail, MatchSource::ProxyAddresses, MatchSource::Upn];

/// Matches `switchboard` users to `microsoft` users with the default order and no overrides.
pub fn build(microsoft: &[GraphUser], switchboard: &[SwitchboardUser]) -> Mapping {
    build_with(microsoft, switchboard, &DEFAULT_ORDER, &[])
}

/// Matches `switchboard` users to `microsoft` users: `overrides` first, then addresses in
/// `order` (empty = [`DEFAULT_ORDER`]). All at once; [`MappingBuild`] does the same in steps.
pub fn build_with(
    microsoft: &[GraphUser],
    switchboard: &[SwitchboardUser],
    order: &[MatchSource],
    overrides: &[MappingOverride],
) -> Mapping {
    let mut b = MappingBuild::new(switchboard.iter().cloned().map(SbUser::from).collect(), order, overrides.to_vec());
    loop {
        match b.step(microsoft, &Mapping::default(), usize::MAX) {
            Some(Built::Whole(m)) => return m,
            Some(Built::Change(_)) => unreachable!("told against no mapping, a build is whole"),
            None => {}
        }
    }
}

/// Indexes of the users that carry an address, by the address's [`address_hash`] folded to
/// 32 bits: the index holds no copy of any address (at 100,000 users, copies of every address,
/// alias and UPN were the largest part of a build). Users under one hash are distinct, in
/// insertion order; a lookup keeps only those that carry the address itself, so a shared
/// hash costs a comparison, never a wrong match.
///
/// An entry is 8 bytes: the folded hash and one user, or (with [`MANY`] set) the position of
/// the list of users in `many`, for the rare hash that several users share.
#[derive(Debug, Default)]
pub(crate) struct Index {
    one: rustc_hash::FxHashMap<u32, u32>,
    many: Vec<Vec<u32>>,
}

/// Marks an [`Index`] entry that points into `many`.
const MANY: u32 = 1 << 31;

/// A 64-bit hash folded to an [`Index`] key.
fn fold(hash: u64) -> u32 {
    (hash >> 32) as u32 ^ hash as u32
}

impl Index {
    /// An index with room for `n` entries.
    pub(crate) fn with_capacity(n: usize) -> Index {
        Index { one: rustc_hash::FxHashMap::with_capacity_and_hasher(n, Default::default()), many: Vec::new() }
    }
    /// Adds user `i` (below 2^31) under `hash` (once).
    pub(crate) fn insert(&mut self, hash: u64, i: u32) {
        match self.one.get_mut(&fold(hash)) {
            None => {
                self.one.insert(fold(hash), i);
            }
            Some(v) if *v & MANY != 0 => {
                let list = &mut self.many[(*v & !MANY) as usize];
                if !list.contains(&i) {
                    list.push(i);
                }
            }
            Some(v) if *v == i => {}
            Some(v) => {
                self.many.push(vec![*v, i]);
                *v = (self.many.len() - 1) as u32 | MANY;
            }
        }
    }
    /// The users under `hash`.
    pub(crate) fn under(&self, hash: u64) -> &[u32] {
        match self.one.get(&fold(hash)) {
            None => &[],
            Some(v) if *v & MANY != 0 => &self.many[(*v & !MANY) as usize],
            Some(v) => std::slice::from_ref(v),
        }
    }
}

/// A switchboard user as a mapping build holds it: only what matching needs, compact (a
/// build holds every switchboard user). The id is the one the mapping then keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SbUser {
    /// Switchboard user id.
    pub id: Id,
    /// Its email addresses as the switchboard gave them, each after a NUL, in one allocation
    /// (an address with a NUL in it, which nothing could match, is left out).
    emails: Box<str>,
    /// Whether it is active.
    pub active: bool,
}

impl SbUser {
    /// Its email addresses, as the switchboard gave them.
    pub fn emails(&self) -> impl Iterator<Item = &str> {
        self.emails.split('\0').skip(1)
    }
}

impl From<SwitchboardUser> for SbUser {
    fn from(u: SwitchboardUser) -> Self {
        let mut emails = String::with_capacity(u.emails.iter().map(|e| e.len() + 1).sum());
        for e in u.emails.iter().filter(|e| !e.contains('\0')) {
            emails.push('\0');
            emails.push_str(e);
        }
        SbUser { id: u.id.into(), emails: emails.into_boxed_str(), active: u.active }
    }
}

/// The switchboard's users being read for a mapping build, a page at a time: each user once
/// (a user that moves between pages while they are read shows up once).
#[derive(Debug, Default)]
pub struct SwitchboardLoad {
    users: Vec<SbUser>,
    /// Users by a hash of their id.
    ids: Index,
}

impl SwitchboardLoad {
    /// A load sized for `expected` users (as many as the last read had).
    pub fn with_capacity(expected: usize) -> Self {
        SwitchboardLoad { users: Vec::with_capacity(expected), ids: Index::with_capacity(expected) }
    }
    /// Users read so far.
    pub fn len(&self) -> usize {
        self.users.len()
    }
    /// Whether none was read yet.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
    /// Adds a page; a user `mapped` already keeps the id string the mapping holds.
    pub fn add(&mut self, page: Vec<SwitchboardUser>, mapped: &BTreeMap<Id, Id>) {
        for u in page {
            let hash = id_hash(&u.id);
            if self.ids.under(hash).iter().any(|&j| *self.users[j as usize].id == *u.id) {
                continue;
            }
            self.ids.insert(hash, self.users.len() as u32);
            let known = mapped.get_key_value(u.id.as_str()).map(|(k, _)| k.clone());
            let mut sb = SbUser::from(u);
            if let Some(k) = known {
                sb.id = k;
            }
            self.users.push(sb);
        }
    }
    /// The users read.
    pub fn into_users(mut self) -> Vec<SbUser> {
        self.users.shrink_to_fit();
        self.users
    }
}

/// A 64-bit hash of a user id (fixed: FxHash, as [`address_hash`]), for an [`Index`] of ids.
pub(crate) fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = rustc_hash::FxHasher::default();
    id.hash(&mut h);
    h.finish()
}

/// Whether Microsoft user `u` carries `address` (normalised) in `source`.
fn carries(u: &GraphUser, source: MatchSource, address: &str) -> bool {
    match source {
        MatchSource::Mail => u.mail().is_some_and(|m| !m.trim().is_empty() && is_address(m, address)),
        MatchSource::ProxyAddresses => u.aliases().any(|a| is_address(a, address)),
        MatchSource::Upn => u.user_principal_name().is_some_and(|upn| is_address(upn, address)),
    }
}

/// The address of an `smtp:` proxy address (either case), if it is one.
fn smtp_alias(p: &str) -> Option<&str> {
    p.get(..5).filter(|s| s.eq_ignore_ascii_case("smtp:")).map(|_| &p[5..])
}

/// Whether switchboard user `u` carries `address` (normalised).
fn sb_carries(u: &SbUser, address: &str) -> bool {
    u.emails().any(|e| is_address(e, address))
}

/// Where a [`MappingBuild`] is.
#[derive(Debug)]
enum Phase {
    /// Indexing Microsoft users' addresses, from this user on.
    Index(usize),
    /// Indexing switchboard users' addresses, from this user on.
    Switchboard(usize),
    /// Resolving the overrides.
    Overrides,
    /// Matching switchboard users, from this user on.
    Match(usize),
    /// Indexing switchboard users by id, from this user on (to be told against the mapping
    /// in effect).
    SwitchboardIds(usize),
    /// Comparing the mapping in effect with the claims, after this switchboard user id.
    Compare(Option<Id>),
    /// Turning the claims into a whole mapping, from this claim on.
    Claims(usize),
}

/// A switchboard user whose claim is a pair already in effect (see `MappingBuild::claimed`).
const KEPT: u32 = u32::MAX - 1;
/// A switchboard user with no claim of its own.
const UNCLAIMED: u32 = u32::MAX;

/// The matching of [`build_with`] as a job that does a bounded amount of work per
/// [`MappingBuild::step`], so that a directory of 100,000 users never needs one long call.
/// The Microsoft users are passed to every step and must not change in between (start a new
/// build when they do); switchboard users, order and overrides are taken at the start.
#[derive(Debug)]
pub struct MappingBuild {
    switchboard: Vec<SbUser>,
    order: Vec<MatchSource>,
    overrides: Vec<MappingOverride>,
    phase: Phase,
    by_mail: Index,
    by_alias: Index,
    by_upn: Index,
    sb_by_email: Index,
    /// Addresses that several switchboard users carry.
    sb_shared: Vec<String>,
    taken_ms: HashSet<u32>,
    taken_sb: HashSet<u32>,
    /// (Microsoft user, switchboard user, which of its addresses matched), overrides first,
    /// then in switchboard order; sorted by Microsoft user (stably) when the matching is done.
    claims: Vec<(u32, u32, u32)>,
    conflicts: BTreeSet<Conflict>,
    /// Per switchboard user, the Microsoft user it alone claims ([`UNCLAIMED`]; [`KEPT`] once
    /// found in effect), while the claims are told against the mapping in effect.
    claimed: Vec<u32>,
    /// Switchboard users by a hash of their id, while the claims are told against the
    /// mapping in effect.
    sb_ids: Index,
    /// The pairs in effect that go, found so far.
    removed: Vec<(Id, Id)>,
    mapping: Mapping,
}

impl MappingBuild {
    /// A build for these switchboard users, match order (empty = [`DEFAULT_ORDER`]) and
    /// overrides.
    pub fn new(switchboard: Vec<SbUser>, order: &[MatchSource], overrides: Vec<MappingOverride>) -> Self {
        MappingBuild {
            switchboard,
            order: if order.is_empty() { DEFAULT_ORDER.to_vec() } else { order.to_vec() },
            overrides,
            phase: Phase::Index(0),
            by_mail: Index::default(),
            by_alias: Index::default(),
            by_upn: Index::default(),
            sb_by_email: Index::default(),
            sb_shared: Vec::new(),
            taken_ms: HashSet::new(),
            taken_sb: HashSet::new(),
            claims: Vec::new(),
            conflicts: BTreeSet::new(),
            claimed: Vec::new(),
            sb_ids: Index::default(),
            removed: Vec::new(),
            mapping: Mapping::default(),
        }
    }

    /// The switchboard users the build matches (without their addresses once matched).
    pub fn switchboard(&self) -> &[SbUser] {
        &self.switchboard
    }

    /// Does up to about `budget` users' worth of work; returns, when done, the new mapping
    /// told against `current`, the mapping in effect (which must not change between steps):
    /// a [`Built::Change`] of at most `budget` pairs, or else a [`Built::Whole`] mapping.
    pub fn step(&mut self, microsoft: &[GraphUser], current: &Mapping, budget: usize) -> Option<Built> {
        let mut left = budget.max(1);
        loop {
            match self.phase {
                Phase::Index(from) => {
                    if from == 0 {
                        // Sized at once: grown a doubling at a time, each smaller table would
                        // be a hole the instance's memory keeps.
                        let n = microsoft.len();
                        self.by_mail = Index::with_capacity(n);
                        self.by_alias = Index::with_capacity(n);
                        self.by_upn = Index::with_capacity(n);
                        self.sb_by_email = Index::with_capacity(self.switchboard.len());
                        // A switchboard user claims one Microsoft user at most.
                        self.claims = Vec::with_capacity(self.switchboard.len() + self.overrides.len());
                    }
                    // A user's alias that is its own mail (Graph lists the primary address
                    // as `SMTP:`, so nearly every user has one) is never looked up when mail
                    // comes first: the mail index finds the user first.
                    let at = |src| self.order.iter().position(|&s| s == src);
                    let mail_first = matches!(
                        (at(MatchSource::Mail), at(MatchSource::ProxyAddresses)),
                        (Some(m), Some(p)) if m < p
                    );
                    let to = microsoft.len().min(from.saturating_add(left));
                    for (i, u) in microsoft.iter().enumerate().take(to).skip(from) {
                        let i = i as u32;
                        let mail = u.mail().filter(|m| !m.trim().is_empty());
                        if let Some(m) = mail {
                            self.by_mail.insert(address_hash(m), i);
                        }
                        for alias in u.aliases() {
                            if mail_first && mail.is_some_and(|m| same_address(m, alias)) {
                                continue;
                            }
                            self.by_alias.insert(address_hash(alias), i);
                        }
                        if let Some(upn) = u.user_principal_name() {
                            self.by_upn.insert(address_hash(upn), i);
                        }
                    }
                    left -= to - from;
                    self.phase = if to == microsoft.len() { Phase::Switchboard(0) } else { Phase::Index(to) };
                }
                Phase::Switchboard(from) => {
                    let to = self.switchboard.len().min(from.saturating_add(left));
                    for i in from..to {
                        for e in self.switchboard[i].emails() {
                            if e.trim().is_empty() {
                                continue;
                            }
                            let hash = address_hash(e);
                            let under = self.sb_by_email.under(hash);
                            if under.contains(&(i as u32)) {
                                continue;
                            }
                            let address = normalise(e);
                            let carriers =
                                under.iter().filter(|&&j| sb_carries(&self.switchboard[j as usize], &address)).count();
                            self.sb_by_email.insert(hash, i as u32);
                            if carriers == 1 {
                                // Now exactly two carry it: reported once.
                                self.sb_shared.push(address);
                            }
                        }
                    }
                    left -= to - from;
                    self.phase = if to == self.switchboard.len() { Phase::Overrides } else { Phase::Switchboard(to) };
                }
                Phase::Overrides => {
                    self.resolve_overrides(microsoft);
                    for email in std::mem::take(&mut self.sb_shared) {
                        let ids = self.sb_carriers(&email).map(|i| &*self.switchboard[i as usize].id);
                        self.conflicts.insert(Conflict {
                            candidates: sorted(ids),
                            email,
                            kind: ConflictKind::SeveralSwitchboardUsers,
                        });
                    }
                    left = left.saturating_sub(self.overrides.len());
                    self.phase = Phase::Match(0);
                }
                Phase::Match(from) => {
                    let to = self.switchboard.len().min(from.saturating_add(left));
                    for i in from..to {
                        self.match_one(microsoft, i as u32);
                    }
                    left -= to - from;
                    if to == self.switchboard.len() {
                        // The indexes are done with: freed before the mapping grows.
                        for ix in [&mut self.by_mail, &mut self.by_alias, &mut self.by_upn, &mut self.sb_by_email] {
                            *ix = Index::default();
                        }
                        // Stable: each user's claims stay in switchboard order.
                        self.claims.sort_by_key(|c| c.0);
                        self.report_shared_claims();
                        // Nothing reads an address past this point: they go before the
                        // mapping grows (the switchboard's ids and flags stay).
                        for u in &mut self.switchboard {
                            u.emails = Box::default();
                        }
                        self.phase = if current.by_microsoft.is_empty() {
                            Phase::Claims(0)
                        } else {
                            self.claimed = vec![UNCLAIMED; self.switchboard.len()];
                            for (ms, sb) in single_claims(&self.claims) {
                                self.claimed[sb as usize] = ms;
                            }
                            self.sb_ids = Index::with_capacity(self.switchboard.len());
                            Phase::SwitchboardIds(0)
                        };
                    } else {
                        self.phase = Phase::Match(to);
                    }
                }
                Phase::SwitchboardIds(from) => {
                    let to = self.switchboard.len().min(from.saturating_add(left));
                    for (j, u) in self.switchboard.iter().enumerate().take(to).skip(from) {
                        self.sb_ids.insert(id_hash(&u.id), j as u32);
                    }
                    left -= to - from;
                    self.phase =
                        if to == self.switchboard.len() { Phase::Compare(None) } else { Phase::SwitchboardIds(to) };
                }
                Phase::Compare(ref mut after) => {
                    let pairs = match after.take() {
                        Some(k) => current.by_switchboard.range::<Id, _>((Bound::Excluded(k), Bound::Unbounded)),
                        None => current.by_switchboard.range::<Id, _>(..),
                    };
                    let mut last = None;
                    for (sb_id, ms_id) in pairs.take(left) {
                        left -= 1;
                        last = Some(sb_id.clone());
                        let hash = id_hash(sb_id);
                        let at = self.sb_ids.under(hash).iter().find(|&&j| self.switchboard[j as usize].id == *sb_id);
                        match at.map(|&j| (j as usize, self.claimed[j as usize])) {
                            Some((j, ms)) if ms < KEPT && microsoft[ms as usize].id == *ms_id => {
                                self.claimed[j] = KEPT;
                            }
                            _ => self.removed.push((ms_id.clone(), sb_id.clone())),
                        }
                    }
                    if last.is_some() && self.removed.len() <= budget {
                        self.phase = Phase::Compare(last);
                    } else {
                        self.sb_ids = Index::default();
                        let claimed = std::mem::take(&mut self.claimed);
                        let added: Vec<(Id, Id)> = if self.removed.len() <= budget {
                            claimed
                                .iter()
                                .enumerate()
                                .filter(|&(_, &ms)| ms < KEPT)
                                .take((budget - self.removed.len()).saturating_add(1))
                                .map(|(j, &ms)| (microsoft[ms as usize].id.clone(), self.switchboard[j].id.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        if self.removed.len() + added.len() <= budget {
                            return Some(Built::Change(MappingChange {
                                removed: std::mem::take(&mut self.removed),
                                added,
                                conflicts: std::mem::take(&mut self.conflicts).into_iter().collect(),
                            }));
                        }
                        // Too many to apply in one call: a whole mapping, in steps.
                        self.removed = Vec::new();
                        self.phase = Phase::Claims(0);
                    }
                }
                Phase::Claims(from) => {
                    let end = self.claims.len().min(from.saturating_add(left));
                    let mut at = from;
                    // Whole users only: a user's claims are taken together.
                    while at < end {
                        let ms = self.claims[at].0;
                        let n = self.claims[at..].iter().take_while(|c| c.0 == ms).count();
                        // A user claimed by several was reported when matching ended.
                        if n == 1 {
                            let ms_id = &microsoft[ms as usize].id;
                            let sb_id = self.switchboard[self.claims[at].1 as usize].id.clone();
                            self.mapping.by_microsoft.insert(ms_id.clone(), sb_id.clone());
                            self.mapping.by_switchboard.insert(sb_id, ms_id.clone());
                        }
                        at += n;
                    }
                    left = left.saturating_sub(at - from);
                    let to = at;
                    if to == self.claims.len() {
                        let mut mapping = std::mem::take(&mut self.mapping);
                        mapping.conflicts = std::mem::take(&mut self.conflicts).into_iter().collect();
                        return Some(Built::Whole(mapping));
                    }
                    self.phase = Phase::Claims(to);
                }
            }
            if left == 0 {
                return None;
            }
        }
    }

    /// Reports each Microsoft user that several switchboard users claim (`claims` sorted by
    /// Microsoft user): one pass over integers, in the call that ends the matching.
    fn report_shared_claims(&mut self) {
        let mut at = 0;
        while at < self.claims.len() {
            let ms = self.claims[at].0;
            let n = self.claims[at..].iter().take_while(|c| c.0 == ms).count();
            if n > 1 {
                let sbs = &self.claims[at..at + n];
                let (_, sb, via) = sbs[0];
                self.conflicts.insert(Conflict {
                    email: normalise(self.switchboard[sb as usize].emails().nth(via as usize).unwrap_or_default()),
                    kind: ConflictKind::SeveralSwitchboardUsers,
                    candidates: sbs.iter().map(|c| self.switchboard[c.1 as usize].id.to_string()).collect(),
                });
            }
            at += n;
        }
    }

    /// Overrides: each resolves to exactly one Microsoft user; the pair is then fixed, and a
    /// switchboard user with an override is never matched by address, even when the override
    /// cannot be resolved: the admin said who it is, a guess would contradict that.
    fn resolve_overrides(&mut self, microsoft: &[GraphUser]) {
        if self.overrides.is_empty() {
            return;
        }
        let ms_by_id: HashMap<&str, u32> = microsoft.iter().enumerate().map(|(i, u)| (&*u.id, i as u32)).collect();
        let sb_by_id: HashMap<&str, u32> =
            self.switchboard.iter().enumerate().map(|(i, u)| (&*u.id, i as u32)).collect();
        let mut fixed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for o in &self.overrides {
            let target = o.microsoft_user.trim();
            let resolved: BTreeSet<&str> = if let Some(&i) = ms_by_id.get(target) {
                BTreeSet::from([&*microsoft[i as usize].id])
            } else {
                let key = normalise(target);
                [MatchSource::Mail, MatchSource::ProxyAddresses, MatchSource::Upn]
                    .into_iter()
                    .flat_map(|src| self.ms_carriers(microsoft, src, &key))
                    .map(|i| &*microsoft[i as usize].id)
                    .collect()
            };
            let unresolved = |why: &str| Conflict {
                email: target.to_string(),
                kind: ConflictKind::UnresolvedOverride,
                candidates: vec![o.switchboard_user_id.clone(), why.to_string()],
            };
            match sb_by_id.get(o.switchboard_user_id.as_str()) {
                None => {
                    self.conflicts.insert(unresolved("no such switchboard user"));
                }
                Some(&sb) => {
                    self.taken_sb.insert(sb);
                    if resolved.is_empty() {
                        self.conflicts.insert(unresolved("no Microsoft user has this id or address"));
                    } else if resolved.len() > 1 {
                        let mut c = unresolved("several Microsoft users have this address");
                        c.candidates.extend(resolved.iter().map(|s| s.to_string()));
                        self.conflicts.insert(c);
                    } else {
                        fixed.entry(resolved.into_iter().next().unwrap()).or_default().push(&o.switchboard_user_id);
                    }
                }
            }
        }
        for (ms, sbs) in fixed {
            self.taken_ms.insert(ms_by_id[ms]);
            let distinct: BTreeSet<&str> = sbs.iter().copied().collect();
            if distinct.len() == 1 {
                // A claim like a match's (no other claim can name either user).
                self.claims.push((ms_by_id[ms], sb_by_id[sbs[0]], u32::MAX));
            } else {
                self.conflicts.insert(Conflict {
                    email: ms.to_string(),
                    kind: ConflictKind::SeveralSwitchboardUsers,
                    candidates: distinct.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
    }

    /// Switchboard user `i`'s candidate Microsoft user, by its addresses in match order.
    fn match_one(&mut self, microsoft: &[GraphUser], i: u32) {
        if self.taken_sb.contains(&i) {
            return;
        }
        let s = &self.switchboard[i as usize];
        let mut found: BTreeSet<u32> = BTreeSet::new();
        let mut via = 0;
        for (k, e) in s.emails().enumerate() {
            let e = normalise(e);
            if e.is_empty() || self.sb_carriers(&e).nth(1).is_some() {
                continue;
            }
            // The first source that knows the address decides.
            let hit = self.order.iter().find_map(|&src| {
                let ids: BTreeSet<u32> = self.ms_carriers(microsoft, src, &e).collect();
                (!ids.is_empty()).then_some(ids)
            });
            let Some(ids) = hit else { continue };
            let ids: BTreeSet<u32> = ids.into_iter().filter(|id| !self.taken_ms.contains(id)).collect();
            match ids.len() {
                0 => {}
                1 => {
                    found.extend(ids);
                    via = k as u32;
                }
                _ => {
                    self.conflicts.insert(Conflict {
                        candidates: sorted(ids.iter().map(|&i| &*microsoft[i as usize].id)),
                        email: e,
                        kind: ConflictKind::SeveralMicrosoftUsers,
                    });
                    found.clear();
                    break;
                }
            }
        }
        if found.len() == 1 {
            let ms = *found.iter().next().unwrap();
            self.claims.push((ms, i, via));
        } else if found.len() > 1 {
            self.conflicts.insert(Conflict {
                email: s.emails().next().map(normalise).unwrap_or_default(),
                kind: ConflictKind::SeveralMicrosoftUsers,
                candidates: sorted(found.iter().map(|&i| &*microsoft[i as usize].id)),
            });
        }
    }
}

impl MappingBuild {
    /// The Microsoft users that carry `address` (normalised) in `source`.
    fn ms_carriers<'a>(
        &'a self,
        microsoft: &'a [GraphUser],
        source: MatchSource,
        address: &'a str,
    ) -> impl Iterator<Item = u32> + 'a {
        let ix = match source {
            MatchSource::Mail => &self.by_mail,
            MatchSource::ProxyAddresses => &self.by_alias,
            MatchSource::Upn => &self.by_upn,
        };
        ix.under(address_hash(address))
            .iter()
            .copied()
            .filter(move |&i| carries(&microsoft[i as usize], source, address))
    }

    /// The switchboard users that carry `address` (normalised).
    fn sb_carriers<'a>(&'a self, address: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.sb_by_email
            .under(address_hash(address))
            .iter()
            .copied()
            .filter(move |&i| sb_carries(&self.switchboard[i as usize], address))
    }

    /// Hands everything the build holds to `trash`, to be freed a slice at a time.
    pub fn discard(mut self, trash: &mut Trash) {
        if trash.switchboard.is_empty() {
            trash.switchboard = self.switchboard;
        } else {
            trash.switchboard.append(&mut self.switchboard);
        }
        trash.mapping(self.mapping);
        // The indexes and claims hold no strings: freeing them is a few deallocations.
    }
}

/// Large values to be freed a slice at a time. Freeing a 100,000-user directory, mapping or
/// build at once means millions of deallocations (well over 100 ms inside the component);
/// [`Trash::shed`] frees at most a given number of entries per call instead, without moving
/// them first.
#[derive(Debug, Default)]
pub struct Trash {
    switchboard: Vec<SbUser>,
    maps: Vec<BTreeMap<Id, Id>>,
    sets: Vec<HashSet<Id>>,
}

impl Trash {
    /// Takes a mapping.
    pub fn mapping(&mut self, m: Mapping) {
        self.maps.push(m.by_microsoft);
        self.maps.push(m.by_switchboard);
    }
    /// Takes a set of ids.
    pub fn placed(&mut self, set: HashSet<Id>) {
        if !set.is_empty() {
            self.sets.push(set);
        }
    }
    /// Nothing left to free.
    pub fn is_empty(&self) -> bool {
        self.switchboard.is_empty() && self.maps.is_empty() && self.sets.is_empty()
    }
    /// Frees up to about `n` entries; true when nothing is left.
    pub fn shed(&mut self, n: usize) -> bool {
        let mut left = n;
        let k = left.min(self.switchboard.len());
        self.switchboard.truncate(self.switchboard.len() - k);
        left -= k;
        while left > 0
            && let Some(m) = self.maps.last_mut()
        {
            while left > 0 && m.pop_last().is_some() {
                left -= 1;
            }
            if m.is_empty() {
                self.maps.pop();
            }
        }
        while left > 0
            && let Some(set) = self.sets.last_mut()
        {
            let mut quota = left.min(set.len());
            left -= quota;
            set.retain(|_| {
                if quota > 0 {
                    quota -= 1;
                    false
                } else {
                    true
                }
            });
            if set.is_empty() {
                self.sets.pop();
            }
        }
        if self.switchboard.is_empty() {
            self.switchboard.shrink_to_fit();
        }
        self.is_empty()
    }
}

/// The (Microsoft user, switchboard user) of each Microsoft user that one claim alone names,
/// of `claims` sorted by Microsoft user.
fn single_claims(claims: &[(u32, u32, u32)]) -> impl Iterator<Item = (u32, u32)> + '_ {
    claims.chunk_by(|a, b| a.0 == b.0).filter(|c| c.len() == 1).map(|c| (c[0].0, c[0].1))
}

/// Ids, sorted and distinct.
fn sorted<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    ids.collect::<BTreeSet<&str>>().into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(id: &str, mail: Option<&str>, upn: &str, proxies: &[&str]) -> GraphUser {
        GraphUser::new(id, Some(upn), mail, proxies.iter().copied())
    }
    fn sb(id: &str, emails: &[&str]) -> SwitchboardUser {
        SwitchboardUser {
            id: id.into(),
            display_name: id.into(),
            emails: emails.iter().map(|s| s.to_string()).collect(),
            line_number: None,
            active: true,
        }
    }

    #[test]
    fn a_graph_user_keeps_its_addresses_as_read_and_writes_the_same_json() {
        let json = serde_json::json!({
            "id": "m1",
            "userPrincipalName": "anna@x.onmicrosoft.com",
            "mail": "",
            "proxyAddresses": ["SMTP:anna@x.com", "SIP:anna@x.com", "smtp:a@x.com", "X500:/o=x"],
            "displayName": "Anna",
        });
        let u: GraphUser = serde_json::from_value(json).unwrap();
        assert_eq!(u.user_principal_name(), Some("anna@x.onmicrosoft.com"));
        assert_eq!(u.mail(), Some(""), "an empty mail is not an absent one");
        assert_eq!(u.proxy_addresses().collect::<Vec<_>>(), ["SMTP:anna@x.com", "smtp:a@x.com"]);
        let back: GraphUser = serde_json::from_value(serde_json::to_value(&u).unwrap()).unwrap();
        assert_eq!(back, u);
        let bare: GraphUser = serde_json::from_value(serde_json::json!({"id": "m2", "proxyAddresses": null})).unwrap();
        assert_eq!((bare.user_principal_name(), bare.mail(), bare.proxy_addresses().count()), (None, None, 0));
        let only_mail = GraphUser::new("m3", None, Some("b@x.com"), ["smtp:b\0c@x.com", "smtp:c@x.com"]);
        assert_eq!((only_mail.user_principal_name(), only_mail.mail()), (None, Some("b@x.com")));
        assert_eq!(only_mail.proxy_addresses().collect::<Vec<_>>(), ["smtp:c@x.com"], "a NUL is no address");

        // The primary address (`SMTP:` and the mail, as spelt) is kept once, and given back as read.
        let proxies = ["smtp:b@y.com", "SMTP:Bea@x.com", "SMTP:bea@x.com"];
        let bea = GraphUser::new("m4", Some("bea@x.onmicrosoft.com"), Some("Bea@x.com"), proxies);
        assert_eq!(bea.proxy_addresses().collect::<Vec<_>>(), proxies);
        assert_eq!(bea.aliases().collect::<Vec<_>>(), ["b@y.com", "Bea@x.com", "bea@x.com"]);
        assert_eq!(bea.addresses.len(), "bea@x.onmicrosoft.comBea@x.com\0smtp:b@y.com\0\0SMTP:bea@x.com".len());
        let back: GraphUser = serde_json::from_value(serde_json::to_value(&bea).unwrap()).unwrap();
        assert_eq!(back, bea);
        assert_eq!(serde_json::to_value(&bea).unwrap()["proxyAddresses"], serde_json::json!(proxies));
        let no_mail = GraphUser::new("m5", None, None, ["SMTP:c@x.com", "smtp:d@x.com"]);
        assert_eq!(
            no_mail.aliases().collect::<Vec<_>>(),
            ["c@x.com", "d@x.com"],
            "without a mail, no entry is the primary"
        );
    }

    #[test]
    fn users_under_one_hash_are_told_apart_by_their_own_addresses() {
        let microsoft = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "u2@x.com", &[])];
        let mut b = MappingBuild::new(vec![], &[], vec![]);
        b.by_mail.insert(7, 0);
        b.by_mail.insert(7, 1);
        b.by_mail.insert(7, 1);
        assert_eq!(b.by_mail.under(7), [0, 1], "each user once, in order");
        // As if b@x.com had a@x.com's hash: only the user who carries a@x.com is found.
        let h = address_hash(" A@x.com");
        b.by_mail.insert(h, 1);
        b.by_mail.insert(h, 0);
        assert_eq!(b.ms_carriers(&microsoft, MatchSource::Mail, "a@x.com").collect::<Vec<_>>(), [0]);
        assert_eq!(b.ms_carriers(&microsoft, MatchSource::Upn, "a@x.com").count(), 0);
    }

    #[test]
    fn an_ascii_address_and_one_that_folds_to_it_are_one_address() {
        // U+212A KELVIN SIGN lowers to ASCII `k`; U+000B (vertical tab) is trimmed as space.
        let (ascii, folded) = ("\u{b} Kim@X.com ", "\u{212a}IM@x.COM");
        assert_eq!(address_hash(ascii), address_hash(folded));
        assert_eq!(address_hash(ascii), address_hash("kim@x.com"));
        assert!(same_address(ascii, folded) && same_address(folded, ascii));
        assert!(is_address(ascii, "kim@x.com") && is_address(folded, "kim@x.com"));
        assert_eq!(normalise(folded), "kim@x.com");
        // Not one address: another letter, a prefix, a non-ASCII letter against its ASCII look-alike.
        assert!(!is_address("Kim@x.co", "kim@x.com") && !is_address("kim@x.comm", "kim@x.com"));
        assert!(!same_address("kim@x.com", "kím@x.com") && !is_address("kím@x.com", "kim@x.com"));
        assert_ne!(address_hash("kim@x.com"), address_hash("kin@x.com"));
    }

    #[test]
    fn matches_trimmed_and_case_insensitive() {
        let m = build(
            &[ms("m1", Some("Anna@Contoso.com"), "anna@contoso.onmicrosoft.com", &[])],
            &[sb("s1", &["  anna@contoso.COM "])],
        );
        assert_eq!(m.by_microsoft.get("m1").map(|s| &**s), Some("s1"));
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn alias_then_upn() {
        let m = build(
            &[
                ms("m1", Some("a@x.com"), "a@x.onmicrosoft.com", &["SMTP:a@x.com", "smtp:anna@x.com"]),
                ms("m2", None, "b@x.com", &[]),
            ],
            &[sb("s1", &["anna@x.com"]), sb("s2", &["b@x.com"])],
        );
        assert_eq!(m.by_switchboard.get("s1").map(|s| &**s), Some("m1"));
        assert_eq!(m.by_switchboard.get("s2").map(|s| &**s), Some("m2"));
    }

    #[test]
    fn mail_wins_over_alias_of_another_user() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "u2@x.com", &["smtp:a@x.com"])],
            &[sb("s1", &["a@x.com"])],
        );
        assert_eq!(m.by_switchboard.get("s1").map(|s| &**s), Some("m1"));
    }

    #[test]
    fn two_microsoft_users_with_one_email_is_a_conflict() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("A@x.com"), "u2@x.com", &[])],
            &[sb("s1", &["a@x.com"])],
        );
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralMicrosoftUsers);
        assert_eq!(m.conflicts[0].candidates, vec!["m1", "m2"]);
    }

    #[test]
    fn two_switchboard_users_with_one_email_is_a_conflict() {
        let m = build(&[ms("m1", Some("a@x.com"), "u1@x.com", &[])], &[sb("s1", &["a@x.com"]), sb("s2", &["A@X.com"])]);
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralSwitchboardUsers);
        assert_eq!(m.conflicts[0].candidates, vec!["s1", "s2"]);
    }

    #[test]
    fn match_order_is_configurable_and_sources_can_be_left_out() {
        let users = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "a@x.com", &[])];
        let sbs = [sb("s1", &["a@x.com"])];
        let upn_first = build_with(&users, &sbs, &[MatchSource::Upn, MatchSource::Mail], &[]);
        assert_eq!(upn_first.by_switchboard.get("s1").map(|s| &**s), Some("m2"));
        let mail_first = build_with(&users, &sbs, &[], &[]);
        assert_eq!(mail_first.by_switchboard.get("s1").map(|s| &**s), Some("m1"));
        let no_mail = build_with(&[ms("m1", Some("a@x.com"), "u1@x.com", &[])], &sbs, &[MatchSource::Upn], &[]);
        assert!(no_mail.by_switchboard.is_empty());
    }

    #[test]
    fn a_users_primary_smtp_address_is_found_as_an_alias_whenever_mail_does_not_come_first() {
        // m1's primary address is also its mail (as Graph lists it; here with a stray space).
        let users = [
            ms("m1", Some("A@x.com"), "u1@x.com", &["SMTP:a@x.com ", "smtp:one@x.com"]),
            ms("m2", Some("b@x.com"), "u2@x.com", &[]),
        ];
        let sbs = [sb("s1", &["a@x.com"]), sb("s2", &["one@x.com"])];
        for order in [
            &[][..],
            &[MatchSource::ProxyAddresses][..],
            &[MatchSource::ProxyAddresses, MatchSource::Mail][..],
            &[MatchSource::Upn, MatchSource::ProxyAddresses][..],
        ] {
            let m = build_with(&users, &sbs, order, &[]);
            // s1 finds m1 by mail or by its primary alias; s2 then claims m1 too: a conflict.
            assert!(m.by_switchboard.is_empty(), "{order:?}: {m:?}");
            assert_eq!(m.conflicts.len(), 1, "{order:?}: {m:?}");
            assert_eq!(m.conflicts[0].candidates, ["s1", "s2"], "{order:?}");
        }
        let alone = build_with(&users, &sbs[..1], &[MatchSource::ProxyAddresses], &[]);
        assert_eq!(alone.by_switchboard.get("s1").map(|s| &**s), Some("m1"), "the primary alias alone finds m1");
    }

    #[test]
    fn overrides_win_and_take_both_users_out_of_address_matching() {
        let users = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", Some("b@x.com"), "u2@x.com", &[])];
        // s1's address says m1, but the override says m2 (by address); s2 claims m1 by id.
        let sbs = [sb("s1", &["a@x.com"]), sb("s2", &["nobody@x.com"]), sb("s3", &["b@x.com"])];
        let ov = |s: &str, m: &str| MappingOverride { switchboard_user_id: s.into(), microsoft_user: m.into() };
        let m = build_with(&users, &sbs, &[], &[ov("s1", "B@x.com"), ov("s2", "m1")]);
        assert_eq!(m.by_switchboard.get("s1").map(|s| &**s), Some("m2"));
        assert_eq!(m.by_switchboard.get("s2").map(|s| &**s), Some("m1"));
        // s3's address names m2, which the override took: s3 stays unmapped, no conflict.
        assert!(!m.by_switchboard.contains_key("s3"));
        assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
    }

    #[test]
    fn overrides_that_name_nobody_are_reported() {
        let users = [ms("m1", Some("a@x.com"), "u1@x.com", &[]), ms("m2", None, "u2@x.com", &["smtp:a@x.com"])];
        // s1 would match m1 by address, but its (unresolvable) override rules that out.
        let sbs = [sb("s1", &["a@x.com"]), sb("s2", &[])];
        let ov = |s: &str, m: &str| MappingOverride { switchboard_user_id: s.into(), microsoft_user: m.into() };
        let m = build_with(&users, &sbs, &[], &[ov("s1", "ghost@x.com"), ov("s9", "m1"), ov("s2", "a@x.com")]);
        assert!(m.by_switchboard.is_empty());
        assert_eq!(m.conflicts.len(), 3, "{:?}", m.conflicts);
        assert!(m.conflicts.iter().all(|c| c.kind == ConflictKind::UnresolvedOverride));
        let amb = m.conflicts.iter().find(|c| c.email == "a@x.com").unwrap();
        assert_eq!(amb.candidates, vec!["s2", "several Microsoft users have this address", "m1", "m2"]);
    }

    #[test]
    fn two_switchboard_users_reaching_one_microsoft_user_is_a_conflict() {
        let m = build(
            &[ms("m1", Some("a@x.com"), "u1@x.com", &["smtp:alias@x.com"])],
            &[sb("s1", &["a@x.com"]), sb("s2", &["alias@x.com"])],
        );
        assert!(m.by_microsoft.is_empty());
        assert_eq!(m.conflicts[0].kind, ConflictKind::SeveralSwitchboardUsers);
    }

    #[test]
    fn a_build_in_steps_of_any_size_gives_the_same_mapping_as_one_in_a_go() {
        // Every case at once: plain matches, aliases, UPNs, shared addresses on both sides,
        // two switchboard users claiming one Microsoft user, and overrides (one unresolved).
        let mut microsoft: Vec<GraphUser> = (0..40)
            .map(|i| {
                ms(
                    &format!("m{i:02}"),
                    Some(&format!("u{i}@x.com")),
                    &format!("upn{i}@x.com"),
                    &[&format!("smtp:alias{i}@x.com")],
                )
            })
            .collect();
        microsoft.push(ms("m90", Some("shared@x.com"), "upn90@x.com", &[]));
        microsoft.push(ms("m91", Some("SHARED@x.com"), "upn91@x.com", &[]));
        let mut switchboard: Vec<SwitchboardUser> = (0..40)
            .map(|i| match i % 4 {
                0 => sb(&format!("s{i:02}"), &[&format!("u{i}@x.com")]),
                1 => sb(&format!("s{i:02}"), &[&format!("alias{i}@x.com")]),
                2 => sb(&format!("s{i:02}"), &[&format!("upn{i}@x.com")]),
                _ => sb(&format!("s{i:02}"), &["nobody@x.com", &format!("u{i}@x.com")]),
            })
            .collect();
        switchboard.push(sb("s90", &["shared@x.com"]));
        switchboard.push(sb("s91", &["twice@x.com"]));
        switchboard.push(sb("s92", &["twice@x.com"]));
        switchboard.push(sb("s93", &["u5@x.com"]));
        let ov = |s: &str, m: &str| MappingOverride { switchboard_user_id: s.into(), microsoft_user: m.into() };
        let overrides = vec![ov("s10", "u11@x.com"), ov("s12", "nobody-at-all@x.com"), ov("s99", "m01")];
        let whole = build_with(&microsoft, &switchboard, &[], &overrides);
        assert!(whole.by_microsoft.len() > 30 && whole.conflicts.len() >= 5, "{whole:?}");
        for budget in [1, 2, 3, 7, 50] {
            let mut b =
                MappingBuild::new(switchboard.iter().cloned().map(SbUser::from).collect(), &[], overrides.clone());
            let mut steps = 0;
            let stepped = loop {
                steps += 1;
                if let Some(Built::Whole(m)) = b.step(&microsoft, &Mapping::default(), budget) {
                    break m;
                }
            };
            assert_eq!(stepped, whole, "budget {budget}");
            assert!(steps >= (microsoft.len() + 2 * switchboard.len()) / budget, "budget {budget}: {steps} steps");
        }
    }

    /// Builds in steps of `budget` told against `current`; a change is applied to a copy of it.
    fn rebuilt(
        current: &Mapping,
        microsoft: &[GraphUser],
        switchboard: &[SwitchboardUser],
        overrides: &[MappingOverride],
        budget: usize,
    ) -> (Mapping, bool) {
        let mut b = MappingBuild::new(switchboard.iter().cloned().map(SbUser::from).collect(), &[], overrides.to_vec());
        loop {
            match b.step(microsoft, current, budget) {
                None => {}
                Some(Built::Whole(m)) => return (m, false),
                Some(Built::Change(mut c)) => {
                    assert!(c.removed.len() + c.added.len() <= budget, "{c:?}");
                    let mut m = current.clone();
                    c.apply_to(&mut m);
                    return (m, true);
                }
            }
        }
    }

    #[test]
    fn a_build_told_against_the_mapping_in_effect_changes_it_into_the_whole_new_one() {
        let microsoft: Vec<GraphUser> = (0..30)
            .map(|i| ms(&format!("m{i:02}"), Some(&format!("u{i}@x.com")), &format!("upn{i}@x.com"), &[]))
            .collect();
        let switchboard: Vec<SwitchboardUser> = (0..30)
            .map(|i| {
                if i % 3 == 0 {
                    sb(&format!("s{i:02}"), &[&format!("upn{i}@x.com")])
                } else {
                    sb(&format!("s{i:02}"), &[&format!("u{i}@x.com")])
                }
            })
            .collect();
        let ov = |s: &str, m: &str| MappingOverride { switchboard_user_id: s.into(), microsoft_user: m.into() };
        let overrides = vec![ov("s10", "u11@x.com"), ov("s12", "m13")];
        let current = build_with(&microsoft, &switchboard, &[], &overrides);
        assert_eq!(current.by_microsoft.len(), 28, "{current:?}");

        // Each case against the same mapping in effect: (what, directory, switchboard, overrides).
        type Case = (&'static str, Vec<GraphUser>, Vec<SwitchboardUser>, Vec<MappingOverride>);
        let mut cases: Vec<Case> = vec![("nothing", microsoft.clone(), switchboard.clone(), overrides.clone())];
        let mut swapped = microsoft.clone();
        swapped[1] = ms("m01", Some("u2@x.com"), "upn1@x.com", &[]);
        swapped[2] = ms("m02", Some("u1@x.com"), "upn2@x.com", &[]);
        cases.push(("two mails swapped", swapped.clone(), switchboard.clone(), overrides.clone()));
        let mut fewer_sb = switchboard.clone();
        fewer_sb.retain(|u| u.id != "s04" && u.id != "s10");
        cases.push(("switchboard users gone", microsoft.clone(), fewer_sb, overrides.clone()));
        let mut fewer_ms = microsoft.clone();
        fewer_ms.retain(|u| &*u.id != "m05" && &*u.id != "m13");
        cases.push(("Microsoft users gone", fewer_ms, switchboard.clone(), overrides.clone()));
        let mut more_sb = switchboard.clone();
        more_sb.push(sb("s40", &["u7@x.com"]));
        more_sb.push(sb("s41", &["u40@x.com"]));
        let mut more_ms = microsoft.clone();
        more_ms.push(ms("m40", Some("u40@x.com"), "upn40@x.com", &[]));
        cases.push(("a claim shared, a user new", more_ms.clone(), more_sb.clone(), overrides.clone()));
        cases.push((
            "overrides changed",
            microsoft.clone(),
            switchboard.clone(),
            vec![ov("s10", "m20"), ov("s20", "m10")],
        ));
        cases.push(("all of it", more_ms, more_sb, vec![ov("s12", "u14@x.com")]));
        let mut renamed = swapped;
        for u in renamed.iter_mut().take(20) {
            *u = ms(&u.id, Some(&format!("new-{}", u.mail().unwrap())), "x@y.z", &[]);
        }
        cases.push(("most users changed", renamed, switchboard.clone(), overrides.clone()));

        for (what, microsoft, switchboard, overrides) in &cases {
            let whole = build_with(microsoft, switchboard, &[], overrides);
            for budget in [1, 2, 7, 64, 4000] {
                let (m, changed) = rebuilt(&current, microsoft, switchboard, overrides, budget);
                assert_eq!(m, whole, "{what}, budget {budget}");
                let pairs = current.by_microsoft.iter().filter(|(k, v)| whole.by_microsoft.get(*k) != Some(v)).count()
                    + whole.by_microsoft.iter().filter(|(k, v)| current.by_microsoft.get(*k) != Some(v)).count();
                assert_eq!(changed, pairs <= budget, "{what}, budget {budget}: {pairs} pairs differ");
            }
        }
        // A first build (nothing in effect) is whole, whatever the budget.
        assert!(!rebuilt(&Mapping::default(), &microsoft, &switchboard, &overrides, 4000).1);
    }

    #[test]
    fn trash_is_freed_a_slice_at_a_time() {
        let microsoft: Vec<GraphUser> = (0..300)
            .map(|i| ms(&format!("m{i}"), Some(&format!("u{i}@x.com")), &format!("upn{i}@x.com"), &[]))
            .collect();
        let switchboard: Vec<SwitchboardUser> =
            (0..300).map(|i| sb(&format!("s{i}"), &[&format!("u{i}@x.com")])).collect();
        let mut b = MappingBuild::new(switchboard.into_iter().map(SbUser::from).collect(), &[], vec![]);
        let m = loop {
            if let Some(Built::Whole(m)) = b.step(&microsoft, &Mapping::default(), 1000) {
                break m;
            }
        };
        assert_eq!(m.by_microsoft.len(), 300);
        let mut trash = Trash::default();
        b.discard(&mut trash);
        trash.mapping(m);
        assert!(!trash.is_empty());
        let mut steps = 0;
        while !trash.shed(100) {
            steps += 1;
            assert!(steps < 100);
        }
        // 300 switchboard users, 600 mapping entries (the indexes and claims hold no strings
        // and go at once): several slices of 100, not one.
        assert!(steps >= 8, "{steps}");
        assert!(trash.is_empty());
    }
}
