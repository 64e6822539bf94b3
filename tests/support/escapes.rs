//! A pre-run command that tries every way out of its run's sandbox (issue 17), and the checks of
//! what it found. Shared by the black-box tests (`tarmac serve`) and the worker's (Lambda).
//!
//! Each attempt whose variable is set prints `ESCAPE <name> OK` or `ESCAPE <name> DENIED: <the
//! error>`; then the script prints what the run's processes hold: descriptors, capabilities,
//! limits.

use std::collections::BTreeMap;

/// The variables it reads: `SERVER_PID` (the process that runs deployments), `DATA_DIR`,
/// `OTHER_STATE` (another stack's state file), `OTHER_RUN` (another run's directory),
/// `NEIGHBOUR` (the command line of another run's process, to find it by), `OUTSIDE` (a
/// directory to write in), `ABSTRACT` (an abstract Unix socket listening outside the run) and
/// `SECRET_MARK` (a value of the server's environment; the log shows this command, so it is
/// spelled in two halves, `SECRET_MARK` and `SECRET_MARK_END`).
pub(crate) const ATTEMPTS: &str = r#"
try() {
  name=$1; shift
  if err=$("$@" 2>&1 >/dev/null); then echo "ESCAPE $name OK"; else echo "ESCAPE $name DENIED: $err"; fi
}
if [ -n "$SERVER_PID" ]; then
  try server-environ cat /proc/$SERVER_PID/environ
  try server-fds ls -l /proc/$SERVER_PID/fd
  try server-cwd ls /proc/$SERVER_PID/cwd/
  try server-signal kill -0 $SERVER_PID
fi
if [ -n "$NEIGHBOUR" ]; then
  npid=0
  for p in /proc/[0-9]*; do
    if [ "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" = "$NEIGHBOUR " ]; then npid=${p#/proc/}; fi
  done
  try neighbour-environ cat /proc/$npid/environ
fi
[ -n "$OTHER_RUN" ] && try other-run-dir ls $OTHER_RUN
[ -n "$OTHER_RUN" ] && try write-other-run touch $OTHER_RUN/pwned
if [ -n "$DATA_DIR" ]; then
  try data-dir ls $DATA_DIR
  try database cat $DATA_DIR/tarmac.db
  try secret-key cat $DATA_DIR/secret.key
  try write-data-dir touch $DATA_DIR/pwned
fi
[ -n "$OTHER_STATE" ] && try other-state cat $OTHER_STATE
[ -n "$OUTSIDE" ] && try write-outside touch $OUTSIDE/pwned
try write-tmp touch /tmp/tarmac-sandbox-pwned-$TARMAC_DEPLOYMENT_ID
[ -n "$ABSTRACT" ] && try abstract-socket perl -MSocket -e 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n"; connect($s, pack_sockaddr_un("\0" . $ARGV[0])) or die "connect: $!\n"' "$ABSTRACT"
if [ -n "$SECRET_MARK" ]; then
  if grep -qs "$SECRET_MARK$SECRET_MARK_END" /proc/[0-9]*/environ; then echo "ESCAPE scan-environ OK"; else echo "ESCAPE scan-environ DENIED: Permission denied (no environment holds the mark)"; fi
fi
ls /proc/$$/fd > $HOME/fds
echo "FDS $(tr '\n' ' ' < $HOME/fds)"
grep CapEff /proc/self/status
echo "LIMITS core=$(ulimit -c) nofile=$(ulimit -n) nproc=$(ulimit -u)"
"#;

/// Attempt name -> `None` when it worked, else its error.
pub(crate) fn attempts(log: &str) -> BTreeMap<String, Option<String>> {
    log.lines()
        .filter_map(|l| l.strip_prefix("ESCAPE "))
        .map(|rest| {
            let (name, outcome) = rest.split_once(' ').unwrap();
            (
                name.to_string(),
                outcome.strip_prefix("DENIED: ").map(str::to_string),
            )
        })
        .collect()
}

/// Every attempt of `names` was tried and refused for want of permission, and the run's
/// processes held no descriptor of the server's, no capability and lowered limits.
pub(crate) fn assert_confined(log: &str, names: &[&str]) {
    let attempts = attempts(log);
    for name in names {
        match attempts.get(*name) {
            Some(Some(why)) => assert!(
                why.contains("Permission denied") || why.contains("Operation not permitted"),
                "{name} failed, but not for want of permission: {why}\n{log}"
            ),
            Some(None) => panic!("the escape {name} worked:\n{log}"),
            None => panic!("the escape {name} was not tried:\n{log}"),
        }
    }
    // The shell holds its stdin, stdout and stderr: nothing of the server's.
    assert!(log.contains("FDS 0 1 2 \n"), "{log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    let limits = log
        .lines()
        .find_map(|l| l.strip_prefix("LIMITS "))
        .unwrap_or_else(|| panic!("{log}"));
    let limit = |name: &str| -> u64 {
        limits
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(limit("core"), 0, "{limits}");
    assert!(limit("nofile") <= 8192, "{limits}");
    assert!(limit("nproc") <= 4096, "{limits}");
}
