#!/usr/bin/env bash
# The Debian package on this machine, for real: `scripts/package-test.sh DEB UPGRADE_DEB` (as root;
# run by scripts/test.sh after `cargo xtask deb`; UPGRADE_DEB is the same package with a later
# revision). It installs DEB with dpkg -i and checks what dpkg and the maintainer scripts made
# (files, conffile, the gateway system user, /var/lib/gateway, the enabled unit, the stat
# override); `systemd-analyze verify` on the unit (no running systemd needed); the man pages
# through groff's warnings. Then the installed /usr/bin/gateway, run as the unit runs it (the
# gateway user, /var/lib/gateway, the installed /etc/gateway/gateway.toml on loopback ports 1883
# and 9883), carries a mosquitto_pub -> mosquitto_sub round trip, keeps a retained message,
# reloads on SIGHUP and stops on SIGTERM with exit 0. The configuration is edited and UPGRADE_DEB
# installed over it: the edit and the retained message must still be there. Last, dpkg --purge,
# after which nothing the package or its scripts made may be left but the gateway user, which
# Debian policy keeps (this script then removes it, when it made it, so the next run tests
# adduser again).
#
# It refuses to run when a gateway package, /etc/gateway or /var/lib/gateway is already there (it
# would take them over and purge them) or when the ports are taken. Whatever happens, it leaves
# the machine as it found it.
set -euo pipefail

USAGE="usage: scripts/package-test.sh gateway_VERSION-1_ARCH.deb gateway_VERSION-2_ARCH.deb"
DEB="$(realpath "${1:?$USAGE}")"
UPGRADE_DEB="$(realpath "${2:?$USAGE}")"
UNIT=/usr/lib/systemd/system/gateway.service
CONF=/etc/gateway/gateway.toml
DATA=/var/lib/gateway
GATEWAY_PID=""
USER_EXISTED=0

fail() {
    echo "package test: FAILED: $*" >&2
    exit 1
}

# dpkg's state of the package ("installed", "config-files"...), empty when it has none left.
package_state() {
    dpkg-query -W -f='${db:Status-Status}' gateway 2>/dev/null | grep -vx 'not-installed' || true
}

if [ "$(id -u)" -ne 0 ]; then
    fail "needs root (dpkg -i, a system user)"
fi
if [ -n "$(package_state)" ]; then
    fail "a gateway package is there already ($(package_state)); this test would purge it"
fi
for path in /etc/gateway "$DATA"; do
    [ ! -e "$path" ] || fail "$path exists already; the package would take it over and the purge remove it"
done
for port in 1883 9883; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "127.0.0.1:$port is in use; the installed configuration listens there"
    fi
done
if getent passwd gateway >/dev/null; then
    USER_EXISTED=1
fi
WORK="$(mktemp -d)"

cleanup() {
    if [ -n "$GATEWAY_PID" ] && kill -0 "$GATEWAY_PID" 2>/dev/null; then
        kill -KILL "$GATEWAY_PID" 2>/dev/null || true
    fi
    if [ -n "$(package_state)" ]; then
        dpkg --purge gateway >/dev/null 2>&1 || true
    fi
    # What a failed purge may have left, which did not exist before (checked above).
    rm -rf /etc/gateway "$DATA"
    if dpkg-statoverride --list "$CONF" >/dev/null; then
        dpkg-statoverride --remove "$CONF" || true
    fi
    if [ "$USER_EXISTED" -eq 0 ] && getent passwd gateway >/dev/null; then
        deluser --system --quiet gateway >/dev/null 2>&1 || true
    fi
    if [ "$USER_EXISTED" -eq 0 ] && getent group gateway >/dev/null; then
        delgroup --system --quiet gateway >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# What exists outside the package managers' own records, before and after: the difference must
# be the package's files while installed, and nothing (but the kept user) after the purge.
snapshot() {
    find /etc /usr /var/lib /opt /srv -xdev \
        \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/ucf \) -prune -o -print \
        | sort
}
snapshot >"$WORK/before"

echo "--- dpkg -i $(basename "$DEB") ($(du -h "$DEB" | cut -f1))"
dpkg -i "$DEB"
[ "$(package_state)" = installed ] || fail "dpkg says the package is '$(package_state)'"
dpkg -L gateway | sort >"$WORK/files"
for path in /usr/bin/gateway /usr/bin/device-sim "$CONF" "$UNIT" \
    /usr/share/gateway/dashboards/gateway-overview.json \
    /usr/share/gateway/dashboards/device-sim.json \
    /usr/share/man/man8/gateway.8.gz /usr/share/man/man5/gateway.toml.5.gz \
    /usr/share/man/man1/device-sim.1.gz \
    /usr/share/bash-completion/completions/gateway \
    /usr/share/zsh/vendor-completions/_gateway \
    /usr/share/fish/vendor_completions.d/gateway.fish; do
    grep -qx "$path" "$WORK/files" || fail "$path is not in the package"
    [ -e "$path" ] || fail "$path is not installed"
done
dpkg-query -W -f='${Conffiles}\n' gateway | grep -q "^ $CONF " || fail "$CONF is not a conffile"
grep -qx 'listen = "127.0.0.1:1883"' "$CONF" || fail "$CONF does not listen on loopback"
grep -qx "dir = \"$DATA\"" "$CONF" || fail "$CONF does not store in $DATA"

IFS=: read -r _ _ uid _ _ home shell < <(getent passwd gateway) || fail "no gateway user"
[ "$uid" -lt 1000 ] || fail "gateway is not a system user (uid $uid)"
[ "$home" = "$DATA" ] || [ "$USER_EXISTED" -eq 1 ] || fail "gateway's home is $home"
[ "$shell" = /usr/sbin/nologin ] || [ "$USER_EXISTED" -eq 1 ] || fail "gateway's shell is $shell"
[ "$(stat -c '%U:%G %a' "$DATA")" = "gateway:gateway 750" ] \
    || fail "$DATA is $(stat -c '%U:%G %a' "$DATA")"
[ "$(stat -c '%U:%G %a' "$CONF")" = "root:gateway 640" ] \
    || fail "$CONF is $(stat -c '%U:%G %a' "$CONF")"
[ -L /etc/systemd/system/multi-user.target.wants/gateway.service ] \
    || fail "gateway.service is not enabled"
echo "installed: $(wc -l <"$WORK/files") paths, user gateway (uid $uid), unit enabled"

echo "--- systemd-analyze verify $UNIT"
# It also checks that ExecStart's binary and the Documentation= man pages exist; any warning
# (an unknown or misspelt key is only a warning) fails the test.
if ! systemd-analyze verify "$UNIT" >"$WORK/verify" 2>&1 || [ -s "$WORK/verify" ]; then
    cat "$WORK/verify" >&2
    fail "systemd-analyze verify"
fi
grep -qx 'Type=notify' "$UNIT" || fail "the unit is not Type=notify"
grep -qx 'LimitNOFILE=1048576' "$UNIT" || fail "the unit's LimitNOFILE"

echo "--- man pages"
grep '^/usr/share/man/' "$WORK/files" | grep '\.gz$' | while read -r page; do
    # -ww: every warning; -z: no output but the warnings.
    if [ -n "$(zcat "$page" | groff -t -man -ww -z -Tutf8 2>&1)" ]; then
        zcat "$page" | groff -t -man -ww -z -Tutf8 >&2 || true
        fail "groff warns about $page"
    fi
done
[ "$(/usr/bin/gateway --version)" = "gateway $(dpkg-query -W -f='${Version}' gateway | cut -d- -f1)" ] \
    || fail "gateway --version says $(/usr/bin/gateway --version)"
/usr/bin/device-sim --version >/dev/null

# As the unit runs it: that user, that working directory, that file. setpriv execs the gateway
# in place, so the pid is the gateway's own. Returns once /readyz answers 200.
start_gateway() {
    (cd "$DATA" && exec setpriv --reuid=gateway --regid=gateway --init-groups \
        /usr/bin/gateway --config "$CONF") >>"$WORK/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    for _ in $(seq 100); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9883/readyz)" = 200 ]; then
            return 0
        fi
        kill -0 "$GATEWAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/gateway.log" >&2
    fail "/readyz did not answer 200 within 10 s"
}

stop_gateway() {
    kill -TERM "$GATEWAY_PID"
    local status=0
    wait "$GATEWAY_PID" || status=$?
    GATEWAY_PID=""
    if [ "$status" -ne 0 ]; then
        cat "$WORK/gateway.log" >&2
        fail "the gateway exited $status on SIGTERM"
    fi
}

echo "--- /usr/bin/gateway --config $CONF, as the gateway user"
start_gateway
[ "$(stat -c %U "/proc/$GATEWAY_PID")" = gateway ] || fail "the gateway does not run as gateway"
[ "$(stat -c '%U' "$DATA/store.redb")" = gateway ] || fail "no store written in $DATA"

# The subscriber may not be subscribed yet when the first message goes out: publish until it
# has one (at most 10 s), then check it is the message sent.
message="package-test-$$"
mosquitto_sub -h 127.0.0.1 -p 1883 -q 1 -t package/test -C 1 -W 15 >"$WORK/received" &
sub=$!
for _ in $(seq 50); do
    mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t package/test -m "$message"
    kill -0 "$sub" 2>/dev/null || break
    sleep 0.2
done
wait "$sub" || fail "mosquitto_sub got nothing (exit $?)"
[ "$(cat "$WORK/received")" = "$message" ] || fail "received '$(cat "$WORK/received")'"
echo "round trip: mosquitto_pub -> gateway -> mosquitto_sub carried '$message'"
mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -r -t package/retained -m "kept-$message"

kill -HUP "$GATEWAY_PID"
sleep 0.5
kill -0 "$GATEWAY_PID" 2>/dev/null || fail "SIGHUP stopped the gateway"
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9883/readyz)" = 200 ] \
    || fail "not ready after SIGHUP"
stop_gateway
echo "reloaded on SIGHUP, stopped on SIGTERM with exit 0"

echo "--- the operator edits $CONF; dpkg -i $(basename "$UPGRADE_DEB")"
sed -i 's/^max_queued_messages = 1000$/max_queued_messages = 2000/' "$CONF"
grep -qx 'max_queued_messages = 2000' "$CONF" || fail "could not edit $CONF"
dpkg -i "$UPGRADE_DEB"
[ "$(dpkg-query -W -f='${Version}' gateway)" = "$(dpkg-deb -f "$UPGRADE_DEB" Version)" ] \
    || fail "the upgrade did not install $(dpkg-deb -f "$UPGRADE_DEB" Version)"
grep -qx 'max_queued_messages = 2000' "$CONF" || fail "the upgrade lost the edit of $CONF"
[ "$(stat -c '%U:%G %a' "$CONF")" = "root:gateway 640" ] \
    || fail "after the upgrade $CONF is $(stat -c '%U:%G %a' "$CONF")"
start_gateway
retained="$(mosquitto_sub -h 127.0.0.1 -p 1883 -t package/retained -C 1 -W 10)" \
    || fail "the retained message is gone after the upgrade"
[ "$retained" = "kept-$message" ] || fail "retained after the upgrade: '$retained'"
stop_gateway
echo "upgraded to $(dpkg-query -W -f='${Version}' gateway): the edit and the store are kept"

echo "--- dpkg --purge gateway"
dpkg --purge gateway
[ -z "$(package_state)" ] || fail "dpkg still has the package: $(package_state)"
while read -r path; do
    # Folders other packages share (/usr/bin...) stay; the package's own files may not.
    if [ -e "$path" ] && [ ! -d "$path" ]; then
        fail "$path is left after the purge"
    fi
done <"$WORK/files"
for path in /etc/gateway "$DATA"; do
    [ ! -e "$path" ] || fail "$path is left after the purge"
done
if dpkg-statoverride --list | grep -q gateway; then
    fail "a stat override is left: $(dpkg-statoverride --list | grep gateway)"
fi
snapshot >"$WORK/after"
# Policy keeps the system user: the account databases' backups may be new, nothing else may.
left="$(comm -13 "$WORK/before" "$WORK/after" | grep -vxE '/etc/(passwd|group|shadow|gshadow)-' || true)"
if [ -n "$left" ]; then
    echo "$left" >&2
    fail "the purge left the paths above"
fi
getent passwd gateway >/dev/null || fail "the purge removed the gateway user, which policy keeps"
echo "purged: nothing left but the gateway system user (kept, as Debian policy has it)"
echo "package test: passed"
