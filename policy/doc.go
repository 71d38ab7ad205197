// Package policy is Sluice's policy language, after Crystal's DSL: text in,
// rules out. It parses policies, checks them against a keyword Registry and
// compiles them into Rules, decides which rule's filters apply to a request
// (Resolve), and evaluates WHEN conditions for automation (Cond.Eval,
// Rule.Step). It does no IO and keeps no global state.
//
// # Grammar
//
//	file     = { policy [";"] }
//	policy   = FOR target [WHERE fcond {AND fcond}] [WHEN expr]
//	           DO action {"," action} [TRANSIENT]
//	target   = TENANT name | VOLUME name "/" name
//	         | FILE name "/" name ":" glob | GROUP name
//	fcond    = field op value                  (file_type = DOCS, file_size < 1MiB)
//	expr     = term {OR term};  term = factor {AND factor}
//	factor   = "(" expr ")" | metric op value  (read_iops > 5000, read_bw >= 100MB/s)
//	action   = SET filter [WITH param {"," param}]
//	param    = name "=" value
//	value    = identifier | number[unit] | "string"
//	op       = < | <= | > | >= | = | == | !=
//
// Keywords (FOR TENANT VOLUME FILE GROUP WHERE WHEN DO SET WITH AND OR
// TRANSIENT) are case-insensitive and reserved. Filter, parameter, metric,
// group and file-type names are case-insensitive (kept in lower case);
// tenant and volume names are case-sensitive, as in the store. AND binds
// tighter than OR. "," after a parameter continues the WITH list unless SET
// follows, which starts the next action. # starts a comment to the end of
// the line. Strings use Go syntax.
//
// The target after TENANT, VOLUME, FILE or GROUP is one word up to white
// space: `acme`, `acme/db`, `acme/home:*.pdf`, `gold`. A file glob (path.Match
// syntax) may quote parts that contain spaces: `acme/home:"My Documents/*"`.
// A glob without '/' matches a file's base name anywhere in the volume; a
// glob with '/' matches the whole path from the volume's root (a leading '/'
// is dropped).
//
// Numbers take units (see filter.ParseQuantity): KiB MiB GiB TiB (binary)
// and KB MB GB TB, K M G (decimal) for sizes and bandwidths; K M G for
// operation counts; an optional "/s" on rates. Lower-case "b" (bits) is
// refused.
//
// Examples:
//
//	FOR VOLUME acme/db DO SET compression WITH algo=zstd, level=3, SET encryption
//	FOR TENANT acme WHERE file_type = DOCS AND file_size < 1MiB DO SET compression
//	FOR FILE acme/home:*.log DO SET compression WITH algo=lz4
//	FOR VOLUME acme/db WHEN read_iops > 5000 DO SET cache WITH size=64MiB TRANSIENT
//	FOR GROUP gold DO SET bandwidth WITH read_min=30MB/s
//
// # Errors
//
// A syntax error is a *ParseError (Line, Col, Found, Expected): `line 1, col
// 5: expected TENANT, VOLUME, FILE or GROUP, found "TENNANT"`. A policy that
// parses but does not fit the registry is a *CompileError (Line, Col and a
// message naming the unknown filter, parameter, metric, group or file type,
// or the bad value, with the registered alternatives). Both wrap sentinels
// (ErrSyntax, ErrUnknownFilter, ErrBadParam, ...) for errors.Is.
//
// # Registry
//
// Filters (with the parameter schemas of package filter), metrics (read_iops,
// write_iops, read_bw, write_bw), groups (name → tenants and volumes) and
// file-type sets (docs, images, media, archives, logs → globs) come from a
// Registry value that the gateway persists as JSON and extends at run time.
// bandwidth and iops are control filters (for the QoS scheduler and the
// cluster controller's SLOs), cache is a control filter, the rest transform
// data.
//
// # Rules and specificity
//
// Compile gives a Rule: Target, Where conditions, When (nil for a static
// rule), Actions in written order, Transient, and the Text. Rules are
// self-contained: group members and file-type globs are copied in at
// compile time, so after changing the registry the owner recompiles the
// rules from their Text.
//
// Resolve picks the filters for a request: the most specific target kind
// that has a matching rule wins (FILE > VOLUME > TENANT > GROUP) and less
// specific rules are ignored, so a volume with its own policy gets only its
// own. Several matching rules of the winning kind combine in ID order
// (a later SET of the same filter replaces its parameters). WHERE
// conditions only match requests that carry a file path.
//
// # Automation
//
// A rule with WHEN is an automation controller's: each second the
// controller evaluates the condition against the metrics of the rule's
// target (Rule.Step) and puts the rule in force or takes it out; only rules
// in force are passed to Resolve. TRANSIENT rules are in force only while
// the condition holds; other WHEN rules stay in force once set.
//
// # Not done
//
//   - Crystal's DELETE action, ON PROXY/OBJECT placement, CALLABLE, and
//     comma-separated target lists.
//   - OR between WHERE conditions; WHERE on anything but file_type and
//     file_size.
//   - Hysteresis for TRANSIENT rules.
package policy
