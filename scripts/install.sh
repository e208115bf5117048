#!/usr/bin/env bash
# Installs codara-agent as a systemd service on a Linux host, idempotently: a second run with
# the same binary changes nothing. See --help.
set -euo pipefail

NAME=codara-agent
SERVICE_USER=codara
# The user tasks run as with TASK_USER=codara-task (its home is where builds keep caches).
TASK_USER_NAME=codara-task
TASK_HOME=/var/lib/codara-task
STATE_DIR=/var/lib/codara-agent
CONF_DIR=/etc/codara-agent
UNIT_DIR=/etc/systemd/system

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
UNIT_SRC=$REPO_DIR/config/codara-agent.service
ENV_SRC=$REPO_DIR/config/.env.example

PREFIX=/usr/local
DESTDIR=${DESTDIR:-}
BINARY=""
ACTION=install
PURGE=0

usage() {
    cat <<EOF
Usage: scripts/install.sh [options]

Installs codara-agent as a systemd service:
  PREFIX/bin/codara-agent                      the binary (0755)
  /etc/codara-agent/.env                       settings (0600), created from config/.env.example
                                               with a fresh CLUSTER_SECRET, never overwritten
  /etc/systemd/system/codara-agent.service     the unit (0644)
creates the system user '$SERVICE_USER' (home $STATE_DIR) and the user tasks can run as,
'$TASK_USER_NAME' (home $TASK_HOME, mode 0700; used once TASK_USER=$TASK_USER_NAME is set in
the .env), if missing, and enables and starts the service. Running it again with the same files
changes nothing.

Options:
  --prefix DIR     installation prefix of the binary (default /usr/local)
  --destdir DIR    stage everything under DIR (also the DESTDIR environment variable); then no
                   user is created and systemctl is not run
  --binary PATH    the binary to install (default: target/release/codara-agent of this checkout)
  --uninstall      stop and disable the service, remove the binary and the unit; keeps
                   /etc/codara-agent/.env and $STATE_DIR
  --purge          with --uninstall: also remove /etc/codara-agent, $STATE_DIR and the users
  -h, --help       print this help

Exit codes: 0 done (or nothing to do), 1 failure, 2 bad command line.
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
bad_usage() { printf 'install.sh: %s (see --help)\n' "$*" >&2; exit 2; }

need_arg() { [ "$#" -ge 2 ] && [ -n "$2" ] || bad_usage "$1 needs a value"; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) need_arg "$@"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) need_arg "$@"; DESTDIR=$2; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --binary) need_arg "$@"; BINARY=$2; shift 2 ;;
        --binary=*) BINARY=${1#*=}; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
done

[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || bad_usage "--purge only goes with --uninstall"
case "$PREFIX" in
    /*) ;;
    *) bad_usage "--prefix must be an absolute path, not '$PREFIX'" ;;
esac
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || PREFIX=/
DESTDIR=${DESTDIR%/}
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
fi

if [ "$(uname -s)" != Linux ]; then
    die "this installer is for Linux/systemd; on macOS use config/com.codara.agent.plist (instructions inside)"
fi

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
SYSTEMD=0
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    SYSTEMD=1
fi
# Touch the live system (users, ownership, systemctl) only for a real install as root.
LIVE=0
[ -z "$DESTDIR" ] && [ "$IS_ROOT" = 1 ] && LIVE=1

BIN_DIR=$DESTDIR$PREFIX/bin
BIN_DEST=$BIN_DIR/$NAME
ETC_DIR=$DESTDIR$CONF_DIR
ENV_DEST=$ETC_DIR/.env
UNIT_DEST_DIR=$DESTDIR$UNIT_DIR
UNIT_DEST=$UNIT_DEST_DIR/$NAME.service

TMP=$(mktemp -d "${TMPDIR:-/tmp}/codara-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# The permission bits of PATH in octal with a leading 0, like the modes given to install(1).
mode_of() { printf '0%s' "$(stat -c '%a' "$1")"; }
owner_of() { stat -c '%U:%G' "$1"; }

# ensure_dir DIR MODE: creates DIR with MODE when missing; an existing one is left as it is.
ensure_dir() {
    if [ ! -d "$1" ]; then
        install -d -m "$2" "$1"
        say "created directory $1"
    fi
}

# set_owner PATH USER:GROUP: only for a live install, and only when it differs.
set_owner() {
    [ "$LIVE" = 1 ] || return 0
    if [ "$(owner_of "$1")" != "$2" ]; then
        chown "$2" "$1"
        say "set owner of $1 to $2"
    fi
}

# put_file SRC DEST MODE: copies SRC over DEST unless they are identical already (then only
# the mode is corrected). The copy goes to a temporary name and is renamed over DEST, so a
# running binary is never written into. Sets CHANGED=1 when DEST was written.
put_file() {
    local src=$1 dest=$2 mode=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        if [ "$(mode_of "$dest")" != "$mode" ]; then
            chmod "$mode" "$dest"
            say "already installed: $dest (mode set to $mode)"
        else
            say "already installed: $dest (unchanged)"
        fi
        return 0
    fi
    local verb=installed
    [ -e "$dest" ] && verb=updated
    install -m "$mode" "$src" "$dest.new.$$"
    mv -f "$dest.new.$$" "$dest"
    CHANGED=1
    say "$verb $dest (mode $mode)"
}

# remove_file PATH: removes it if present.
remove_file() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        say "removed $1"
    else
        say "not installed: $1 (nothing to remove)"
    fi
}

unit_known() { systemctl list-unit-files "$NAME.service" 2>/dev/null | grep -q "^$NAME.service"; }

do_uninstall() {
    if [ "$LIVE" = 1 ] && [ "$SYSTEMD" = 1 ]; then
        if unit_known; then
            systemctl disable --now "$NAME.service" || warn "could not stop/disable $NAME.service"
            say "stopped and disabled $NAME.service"
        fi
    elif [ -z "$DESTDIR" ]; then
        say "not stopping the service (not root or systemd not running); run: systemctl disable --now $NAME"
    fi
    remove_file "$BIN_DEST"
    remove_file "$UNIT_DEST"
    if [ "$LIVE" = 1 ] && [ "$SYSTEMD" = 1 ]; then
        systemctl daemon-reload
    fi
    if [ "$PURGE" = 1 ]; then
        local d
        for d in "$ETC_DIR" "$DESTDIR$STATE_DIR"; do
            if [ -e "$d" ]; then
                rm -rf "$d"
                say "purged $d"
            fi
        done
        if [ "$LIVE" = 1 ] && getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER" && say "removed user $SERVICE_USER" || warn "could not remove user $SERVICE_USER"
        fi
        if [ "$LIVE" = 1 ] && getent passwd "$TASK_USER_NAME" >/dev/null 2>&1; then
            userdel -r "$TASK_USER_NAME" && say "removed user $TASK_USER_NAME and $TASK_HOME" \
                || warn "could not remove user $TASK_USER_NAME"
        fi
    else
        say "kept $ENV_DEST and $DESTDIR$STATE_DIR (settings, secret, task history); --purge removes them"
    fi
    say "uninstalled"
}

# The shell of a user that must not log in: nologin where it is, else /bin/false.
nologin_shell() {
    local nologin
    nologin=$(command -v nologin || true)
    [ -n "$nologin" ] || nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    echo "$nologin"
}

ensure_user() {
    if [ -n "$DESTDIR" ]; then
        say "skipping creation of user '$SERVICE_USER' (DESTDIR set); on the target host run:"
        say "  useradd --system --user-group --home-dir $STATE_DIR --no-create-home --shell /usr/sbin/nologin $SERVICE_USER"
        return 0
    fi
    if getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        say "user '$SERVICE_USER' already exists"
        return 0
    fi
    if [ "$IS_ROOT" != 1 ]; then
        say "skipping creation of user '$SERVICE_USER' (not root); create it as root before starting the service"
        return 0
    fi
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell "$(nologin_shell)" \
        --comment "Codara cluster agent" "$SERVICE_USER"
    say "created system user '$SERVICE_USER' (home $STATE_DIR, no login shell)"
}

# The user tasks run as under TASK_USER: no login, no group shared with the agent's user (so
# it cannot read DATA_DIR or the .env), a home of its own that only it can read.
ensure_task_user() {
    if [ -n "$DESTDIR" ] || [ "$IS_ROOT" != 1 ]; then
        say "skipping creation of the task user '$TASK_USER_NAME'; on the target host, as root, run:"
        say "  useradd --system --user-group --create-home --home-dir $TASK_HOME --shell /usr/sbin/nologin $TASK_USER_NAME && chmod 0700 $TASK_HOME"
        return 0
    fi
    if getent passwd "$TASK_USER_NAME" >/dev/null 2>&1; then
        say "task user '$TASK_USER_NAME' already exists"
        return 0
    fi
    useradd --system --user-group --create-home --home-dir "$TASK_HOME" --shell "$(nologin_shell)" \
        --comment "Codara build tasks" "$TASK_USER_NAME"
    chmod 0700 "$TASK_HOME"
    say "created system user '$TASK_USER_NAME' (home $TASK_HOME, mode 0700) for TASK_USER;"
    say "  to run tasks as it, set TASK_USER=$TASK_USER_NAME in $CONF_DIR/.env and restart (see README, Security)"
}

# The new .env: the example with CLUSTER_SECRET set to 32 random bytes in hex (64 chars).
make_env() {
    local out=$1 secret
    secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    [ "${#secret}" -eq 64 ] || die "could not read 32 random bytes from /dev/urandom"
    (
        umask 077
        awk -v s="$secret" '
            !done && /^#[[:space:]]*CLUSTER_SECRET=/ {
                print "# Generated by install.sh; must match the main server'"'"'s secret."
                print "CLUSTER_SECRET=" s
                done = 1
                next
            }
            { print }
            END { if (!done) print "CLUSTER_SECRET=" s }
        ' "$ENV_SRC" >"$out"
    )
    chmod 0600 "$out"
}

do_install() {
    [ -f "$UNIT_SRC" ] || die "missing $UNIT_SRC"
    [ -f "$ENV_SRC" ] || die "missing $ENV_SRC"
    if [ -z "$BINARY" ]; then
        BINARY=$REPO_DIR/target/release/$NAME
        [ -f "$BINARY" ] || die "no binary at $BINARY: build it with 'cargo build --release' or pass --binary PATH"
    fi
    [ -f "$BINARY" ] && [ -x "$BINARY" ] || die "--binary $BINARY is not an executable file"
    BINARY=$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")
    local version
    version=$("$BINARY" --version 2>/dev/null) || die "$BINARY --version failed: is it a codara-agent binary for this machine?"
    case "$version" in
        "$NAME "*) ;;
        *) die "$BINARY does not look like codara-agent (--version said '$version')" ;;
    esac
    if [ -z "$DESTDIR" ] && [ "$IS_ROOT" != 1 ]; then
        warn "not root and no --destdir: writing into $PREFIX and /etc will probably fail"
    fi

    ensure_user
    ensure_task_user

    local bin_changed=0 unit_changed=0
    ensure_dir "$BIN_DIR" 0755
    CHANGED=0
    put_file "$BINARY" "$BIN_DEST" 0755
    bin_changed=$CHANGED
    set_owner "$BIN_DEST" root:root

    # The agent reads its .env itself (--env-file), as the service user: the file belongs to
    # that user, mode 0600; the directory is root's, readable by the group only.
    ensure_dir "$ETC_DIR" 0750
    if [ "$LIVE" = 1 ] && getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        set_owner "$ETC_DIR" "root:$SERVICE_USER"
    fi
    if [ -e "$ENV_DEST" ]; then
        say "already exists: $ENV_DEST (kept as it is; never overwritten)"
        local m
        m=$(mode_of "$ENV_DEST")
        case "$m" in
            0600|0400) ;;
            *) warn "$ENV_DEST has mode $m; it holds the cluster secret, consider chmod 600" ;;
        esac
    else
        make_env "$TMP/env"
        install -m 0600 "$TMP/env" "$ENV_DEST.new.$$"
        mv -f "$ENV_DEST.new.$$" "$ENV_DEST"
        say "created $ENV_DEST (mode 0600) with a new random CLUSTER_SECRET;"
        say "  give the same secret to the main server: grep ^CLUSTER_SECRET= $CONF_DIR/.env"
    fi
    if [ "$LIVE" = 1 ] && getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        set_owner "$ENV_DEST" "$SERVICE_USER:$SERVICE_USER"
    fi
    # Validate the settings the service will read (no side effects; the real environment is
    # left out so that only the file counts).
    if ! (cd "$TMP" && env -i PATH="$PATH" "$BINARY" check-config --env-file "$ENV_DEST" >"$TMP/check.out" 2>&1); then
        warn "$ENV_DEST does not pass 'codara-agent check-config':"
        sed 's/^/    /' "$TMP/check.out" >&2
    fi

    # The unit, with ExecStart pointing at PREFIX/bin.
    ensure_dir "$UNIT_DEST_DIR" 0755
    sed "s#/usr/local/bin/$NAME#$PREFIX/bin/$NAME#g" "$UNIT_SRC" >"$TMP/unit"
    CHANGED=0
    put_file "$TMP/unit" "$UNIT_DEST" 0644
    unit_changed=$CHANGED
    set_owner "$UNIT_DEST" root:root

    if [ "$LIVE" = 1 ] && [ "$SYSTEMD" = 1 ]; then
        if [ "$unit_changed" = 1 ]; then
            systemctl daemon-reload
            say "systemctl daemon-reload"
        fi
        if ! systemctl is-enabled --quiet "$NAME.service" 2>/dev/null || ! systemctl is-active --quiet "$NAME.service"; then
            systemctl enable --now "$NAME.service"
            say "enabled and started $NAME.service"
        elif [ "$bin_changed" = 1 ] || [ "$unit_changed" = 1 ]; then
            # Draining: running tasks get SHUTDOWN_TIMEOUT to finish.
            systemctl restart "$NAME.service"
            say "restarted $NAME.service (new binary or unit)"
        else
            say "$NAME.service already enabled and running"
        fi
        say "status: systemctl status $NAME; logs: journalctl -u $NAME -f"
    else
        if [ -n "$DESTDIR" ]; then
            say "staged under $DESTDIR; on the target host, as root, run:"
        else
            say "systemd is not running here or not root; to start the service run, as root:"
        fi
        say "  systemctl daemon-reload && systemctl enable --now $NAME"
    fi
    say "done ($version)"
}

if [ "$ACTION" = uninstall ]; then
    do_uninstall
else
    do_install
fi
