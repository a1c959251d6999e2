#!/usr/bin/env bash
# kiln install for a Raspberry Pi 5: binary, systemd units, broker config,
# credentials, environment files, and a check of the runtime prerequisites.
# Walk-through: docs/deploy.md.
#
#   sudo deploy/install.sh --binary ./kiln --role single --cards 1
#   sudo deploy/install.sh --binary ./kiln --role cluster --node pi1 --peers pi1.local,pi2.local,pi3.local
#   sudo deploy/install.sh --binary ./kiln --role worker --broker nats://pi1.local:4222,nats://pi2.local:4222
#
# Roles: single (broker + workers, one Pi), cluster (one of 3 brokers +
# workers), hub (single + a leaf node listener), leaf (joins a hub: local
# relay + workers), worker (workers only, against a broker elsewhere).
# --root DIR installs under DIR without touching the system (no user, no
# systemctl): for packaging and tests.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
binary="" role="single" cards=1 root="" node="" peers="" broker="" hub="" controllers="controller-1"
start=1 force=0 strict=0

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) binary="$2"; shift 2 ;;
	--role) role="$2"; shift 2 ;;
	--cards) cards="$2"; shift 2 ;;
	--root) root="$2"; start=0; shift 2 ;;
	--node) node="$2"; shift 2 ;;
	--peers) peers="$2"; shift 2 ;;
	--broker) broker="$2"; shift 2 ;;
	--hub) hub="$2"; shift 2 ;;
	--controllers) controllers="$2"; shift 2 ;;
	--no-start) start=0; shift ;;
	--force) force=1; shift ;;
	--strict) strict=1; shift ;;
	-h | --help) usage 0 ;;
	*) echo "install: unknown argument $1" >&2; usage 2 ;;
	esac
done

die() { echo "install: $*" >&2; exit 1; }
warn() { echo "install: warning: $*" >&2; warnings=$((warnings + 1)); }
warnings=0

[ -n "$binary" ] || die "--binary PATH is required (GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -o kiln ./cmd/kiln)"
[ -x "$binary" ] || die "$binary is not an executable"
case "$role" in single | cluster | hub | leaf | worker) ;; *) die "--role must be single, cluster, hub, leaf or worker" ;; esac
[[ "$cards" =~ ^[0-9]+$ ]] || die "--cards must be a number"
if [ "$role" = cluster ]; then
	[ -n "$node" ] || die "--role cluster needs --node NAME (this Pi's name in the cluster)"
	IFS=, read -r -a peer_list <<<"$peers"
	[ "${#peer_list[@]}" -eq 3 ] || die "--role cluster needs --peers with the 3 Pis' host names, this one included"
fi
[ "$role" != worker ] || [ -n "$broker" ] || die "--role worker needs --broker URL(s)"
[ "$role" != leaf ] || [ -n "$hub" ] || [ -e "$root/etc/kiln/leaf-remote.conf" ] || die "--role leaf needs --hub HOST:7422 or the hub's /etc/kiln copied here"

etc="$root/etc/kiln" lib="$root/var/lib/kiln" bin="$root/usr/local/bin" units="$root/etc/systemd/system"
doc="$root/usr/local/share/doc/kiln"

# --- runtime prerequisites: warn (or fail with --strict), never guess ---
check() {
	echo "== checking the runtime prerequisites"
	arch="$(uname -m)"
	[ "$arch" = aarch64 ] || warn "this machine is $arch, not a Pi 5 (aarch64)"
	if [ -r /proc/device-tree/model ]; then
		grep -qa "Raspberry Pi 5" /proc/device-tree/model || warn "not a Raspberry Pi 5: $(tr -d '\0' </proc/device-tree/model)"
	fi
	if [ "$role" != hub ] && [ "$cards" -gt 0 ]; then
		[ -e /usr/lib/axcl/libaxcl_rt.so ] || [ -n "${KILN_AXCL_LIB:-}" ] ||
			warn "no card runtime (/usr/lib/axcl/libaxcl_rt.so): install the AXCL package (docs/card.md) or workers serve nothing"
		if command -v lspci >/dev/null; then
			lspci 2>/dev/null | grep -qi axera || warn "lspci shows no Axera card (PCIe: dtparam=pciex1 in config.txt, reseat the card)"
		fi
		[ -e /dev/axcl_host ] || warn "/dev/axcl_host is missing: the card's kernel modules are not loaded (docs/card.md)"
	fi
	if command -v timedatectl >/dev/null; then
		[ "$(timedatectl show -p NTPSynchronized --value 2>/dev/null)" = yes ] ||
			warn "the clock is not NTP-synchronised: job ids, deadlines and TTLs use it"
	fi
	target="${root:-/}"
	while [ ! -e "$target" ]; do target="$(dirname "$target")"; done
	avail_kb="$(df -Pk "$target" | awk 'NR==2 {print $4}')"
	[ "${avail_kb:-0}" -ge 1048576 ] || warn "less than 1 GiB free for the queue store"
	[ -n "$root" ] || command -v systemctl >/dev/null || warn "no systemctl: start kiln by hand"
	if [ "$strict" = 1 ] && [ "$warnings" -gt 0 ]; then die "$warnings prerequisite(s) missing (--strict)"; fi
}
check

# --- files ---
echo "== installing"
install -d -m 0755 "$bin" "$units" "$doc"
install -d -m 0750 "$etc" "$lib" "$lib/models"
install -m 0755 "$binary" "$bin/kiln"
install -m 0644 "$here/systemd/kiln-broker.service" "$here/systemd/kiln-worker@.service" "$units/"
[ -e "$here/../docs/deploy.md" ] && install -m 0644 "$here/../docs/deploy.md" "$doc/"

conf=""
case "$role" in single) conf=single.conf ;; cluster) conf=cluster.conf ;; hub) conf=hub.conf ;; leaf) conf=leaf.conf ;; esac
if [ -n "$conf" ]; then
	if [ -e "$etc/$conf" ] && [ "$force" = 0 ]; then
		echo "keeping $etc/$conf"
	else
		install -m 0640 "$here/nats/$conf" "$etc/$conf"
	fi
fi

# Credentials: made once, on the first broker Pi; the others get a copy.
if [ ! -e "$etc/auth.conf" ]; then
	case "$role" in
	single | hub | cluster)
		if [ "$role" = cluster ] && [ "$node" != "${peer_list[0]%%.*}" ] && [ "$node" != "${peer_list[0]}" ]; then
			die "no $etc/auth.conf: run the install on ${peer_list[0]} first and copy its /etc/kiln here (every node needs the same users)"
		fi
		hubarg=()
		[ "$role" = hub ] && hubarg=(--hub "$(hostname).local:7422")
		"$bin/kiln" broker init-auth --controllers "$controllers" --seed-dir /etc/kiln "${hubarg[@]}" "$etc"
		rm -f "$etc/worker.env" # init-auth's has the seed only: the full one is written below
		;;
	*) die "no $etc/auth.conf: copy /etc/kiln from the broker Pi first (the worker's seed, auth.conf)" ;;
	esac
fi
if [ "$role" = leaf ] && [ -n "$hub" ]; then
	sed -i "s|@[^\"]*\"|@$hub\"|" "$etc/leaf-remote.conf"
fi

write_env() { # file, content: kept when present unless --force
	if [ -e "$1" ] && [ "$force" = 0 ]; then
		echo "keeping $1"
	else
		printf '%s\n' "$2" >"$1"
		chmod 0640 "$1"
	fi
}
if [ -n "$conf" ]; then
	env="# kiln broker settings (kiln-broker.service). docs/deploy.md
KILN_CONFIG=/etc/kiln/$conf
KILN_LISTEN=0.0.0.0:4222
KILN_DATA=/var/lib/kiln/broker"
	case "$role" in
	cluster)
		env+="
KILN_NODE=$node
KILN_CLUSTER_LISTEN=0.0.0.0:6222
KILN_ROUTE_1=nats-route://${peer_list[0]}:6222
KILN_ROUTE_2=nats-route://${peer_list[1]}:6222
KILN_ROUTE_3=nats-route://${peer_list[2]}:6222" ;;
	hub) env+="
KILN_LEAF_LISTEN=0.0.0.0:7422" ;;
	leaf) env+="
KILN_LEAF=1" ;;
	esac
	write_env "$etc/broker.env" "$env"
fi
if [ -z "$broker" ]; then
	broker="nats://127.0.0.1:4222"
	if [ "$role" = cluster ]; then
		broker="nats://127.0.0.1:4222,nats://${peer_list[0]}:4222,nats://${peer_list[1]}:4222,nats://${peer_list[2]}:4222"
	fi
fi
[ -e "$etc/worker.nk" ] || die "no $etc/worker.nk: copy it from the broker Pi's /etc/kiln"
write_env "$etc/worker.env" "# kiln worker settings (kiln-worker@N.service). docs/deploy.md
KILN_NATS_URL=$broker
KILN_NKEY=/etc/kiln/worker.nk
KILN_MODELS=/var/lib/kiln/models"

if [ -z "$root" ]; then
	id kiln >/dev/null 2>&1 || useradd --system --home-dir /var/lib/kiln --shell /usr/sbin/nologin kiln
	chown -R kiln:kiln /var/lib/kiln
	chown -R root:kiln /etc/kiln
	chmod 0640 /etc/kiln/*
fi

units_to_start=()
[ -n "$conf" ] && units_to_start+=(kiln-broker.service)
for ((i = 0; i < cards; i++)); do units_to_start+=("kiln-worker@$i.service"); done
if [ "$start" = 1 ]; then
	systemctl daemon-reload
	systemctl enable --now "${units_to_start[@]}"
	echo "== started: ${units_to_start[*]}"
	echo "logs: journalctl -u kiln-broker -u 'kiln-worker@*' -f -o cat"
else
	echo "== installed; start with: systemctl daemon-reload && systemctl enable --now ${units_to_start[*]}"
fi
[ "$warnings" -eq 0 ] || echo "install: $warnings warning(s) above"
