package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/janitor"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/gateway"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/llm"
)

// Every environment variable kiln reads. Each has a flag of the same
// meaning (environment lists them); a flag given on the command line wins.
const (
	envNATSURL   = "KILN_NATS_URL"   // clients and workers: the broker URL(s), comma-separated
	envListen    = "KILN_LISTEN"     // kiln up / broker: client listen address; clients: the URL when KILN_NATS_URL is unset
	envData      = "KILN_DATA"       // kiln up / broker: JetStream store folder
	envConfig    = "KILN_CONFIG"     // kiln up / broker: optional nats-server config file
	envAXCLLib   = axcl.EnvLibrary   // path of libaxcl_rt.so
	envModels    = "KILN_MODELS"     // folder of model packages, one sub-folder per model
	envSlots     = "KILN_SLOTS"      // kiln up / worker / models check: K/V slots of each chat model
	envPrefix    = "KILN_PREFIX"     // subject prefix
	envLogFormat = "KILN_LOG_FORMAT" // text or json
	envDebug     = "KILN_DEBUG"      // any value: debug logs
	envNkey      = "KILN_NKEY"       // clients and workers: nkey seed file (kiln broker init-auth)
	envClientID  = "KILN_CLIENT_ID"  // clients: the id broker permissions know this client by
	envTLSCA     = "KILN_TLS_CA"     // clients and workers: CA file of the broker's TLS certificate
	envReplicas  = "KILN_REPLICAS"   // kiln up / broker: stream replicas (default: from the cluster size)
	envLeaf      = "KILN_LEAF"       // kiln broker: 1 = a leaf node of a central broker
	envLockDir   = "KILN_LOCK_DIR"   // workers, kiln card, kiln models: folder of the per-card locks
	envWebSocket = "KILN_WEBSOCKET"  // kiln up / broker: host:port of a NATS WebSocket listener (default: none)
	// kiln up / broker / worker: how long a job for a model no live worker
	// serves waits before the janitor answers it no_worker.
	envUnservedGrace = "KILN_UNSERVED_GRACE"
)

const (
	defaultData   = "/var/lib/kiln"
	defaultModels = "/var/lib/kiln/models"
)

// setting is one environment variable and the flag of the same meaning.
type setting struct {
	env, flag, what string
}

// environment is every environment variable kiln reads, as `kiln help`
// lists them (the thermal ones are in thermal.go's constants).
var environment = []setting{
	{envNATSURL, "nats", "broker URL(s) of the client commands and kiln worker; unset: nats://$KILN_LISTEN, else " + nats.DefaultURL},
	{envListen, "listen", "kiln up / broker: the address clients connect to (default " + broker.DefaultListen + ")"},
	{envData, "data", "kiln up / broker: the JetStream store folder (default " + defaultData + ")"},
	{envConfig, "config", "kiln up / broker: a nats-server config file (accounts, TLS, cluster)"},
	{envReplicas, "replicas", "kiln up / broker: stream replicas (default: from the cluster size)"},
	{envLeaf, "leaf", "kiln broker: 1 = a leaf node of a central broker"},
	{envWebSocket, "websocket", "kiln up / broker: host:port of a NATS WebSocket listener for browsers, same users and permissions (default: none)"},
	{envUnservedGrace, "unserved-grace", "kiln up / broker / worker: how long a job for a model no live worker serves waits before it is answered no_worker (default " + janitor.DefaultGrace.String() + ")"},
	{envPrefix, "prefix", "subject prefix (default " + schema.DefaultPrefix + ")"},
	{envAXCLLib, "lib", "path of libaxcl_rt.so (default " + axcl.DefaultLibraryPath + ")"},
	{envLockDir, "lock-dir", "folder of the per-card locks a worker holds (default /run/kiln when it exists, else $TMPDIR/kiln)"},
	{envModels, "models", "folder of model packages, one sub-folder per model (default " + defaultModels + ")"},
	{envSlots, "slots", "kiln up / worker / models check: K/V slots of each chat model, so many of its jobs run at once (default 1, at most " + strconv.Itoa(llm.MaxSlots) + "; more than the card's CMM holds refuse the package, with the figures)"},
	{envGovernor, "governor", "off: no thermal governor"},
	{envCardTemp, "card-temp", "card pause,resume,critical °C"},
	{envSoCTemp, "soc-temp", "SoC pause,resume,critical °C"},
	{envSoCZone, "soc-zone", "thermal zone file of the host SoC"},
	{envGateway, "gateway", "kiln up / gateway: HTTP address of the OpenAI-compatible gateway; kiln up: off runs none (default " + gateway.DefaultAddr + ")"},
	{envGatewayKeys, "gateway-keys", "kiln up / gateway: API keys as client:key, comma-separated (none: the gateway is open)"},
	{envGatewayKeysFile, "gateway-keys-file", "kiln up / gateway: file of API keys, one client:key a line"},
	{envGatewayURL, "gateway-url", "kiln up / gateway: base URL clients reach the gateway at (image URLs)"},
	{envNkey, "nkey", "nkey seed file to log in with (kiln broker init-auth)"},
	{envClientID, "client-id", "the id broker permissions know a client by: the token of its jobs, replies, results and cancels (unset: anonymous jobs)"},
	{envTLSCA, "tls-ca", "CA file of the broker's TLS certificate (tls:// URLs)"},
	{envLogFormat, "log-format", "text or json (default: text on a terminal, else json)"},
	{envDebug, "debug", "any value: debug logs"},
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// defaultURL is the broker URL of a command without --nats:
// $KILN_NATS_URL, else the address of $KILN_LISTEN (what `KILN_LISTEN=…
// make run` listens on), else nats.DefaultURL.
func defaultURL() string {
	if v := os.Getenv(envNATSURL); v != "" {
		return v
	}
	if v := os.Getenv(envListen); v != "" {
		return "nats://" + dialAddr(v)
	}
	return nats.DefaultURL
}

// dialAddr is the address a client dials to reach a server listening on
// listen: a wildcard or empty host is this host.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// connFlags are the flags of every command that talks to a broker.
type connFlags struct {
	url      string
	prefix   string
	nkey     string
	clientID string
	tlsCA    string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "nats", defaultURL(), "broker URL(s), comma-separated ($"+envNATSURL+", else nats://$"+envListen+")")
	fs.StringVar(&c.prefix, "prefix", getenv(envPrefix, schema.DefaultPrefix), "subject prefix ($"+envPrefix+")")
	fs.StringVar(&c.nkey, "nkey", getenv(envNkey, ""), "nkey seed file to log in with ($"+envNkey+")")
	fs.StringVar(&c.clientID, "client-id", getenv(envClientID, ""), "client id: the token of its jobs, replies, results, cancels and inbox, which broker permissions pin ($"+envClientID+"; unset: anonymous jobs, for an open broker only)")
	fs.StringVar(&c.tlsCA, "tls-ca", getenv(envTLSCA, ""), "CA file that signed the broker's TLS certificate ($"+envTLSCA+"; tls:// URLs)")
}

func (c *connFlags) topology() topology.Config {
	return topology.Config{Prefix: c.prefix}.WithDefaults()
}

// brokerFlags are the flags of the commands that run the embedded broker.
type brokerFlags struct {
	listen, data, config string
	websocket            string
	queueMax             int64
	jobMaxAge            time.Duration
	replicas             int
	account              string
	leaf                 bool
}

func (b *brokerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.listen, "listen", getenv(envListen, broker.DefaultListen), "client listen address host:port ($"+envListen+")")
	fs.StringVar(&b.websocket, "websocket", getenv(envWebSocket, ""), "host:port of a NATS WebSocket listener for browsers (nats.ws), same users and permissions ($"+envWebSocket+"; unset: none)")
	fs.StringVar(&b.data, "data", getenv(envData, defaultData), "JetStream store folder ($"+envData+")")
	fs.StringVar(&b.config, "config", getenv(envConfig, ""), "nats-server config file: accounts, TLS, cluster ($"+envConfig+")")
	fs.Int64Var(&b.queueMax, "queue-max", topology.DefaultMaxQueuedJobs, "most jobs queued at once; more are refused at publish")
	fs.DurationVar(&b.jobMaxAge, "job-max-age", topology.DefaultJobMaxAge, "how long a job may wait in the queue")
	replicas, _ := strconv.Atoi(getenv(envReplicas, "0"))
	fs.IntVar(&b.replicas, "replicas", replicas, "stream replicas ($"+envReplicas+"; 0: 1 on one server, min(3, routes) on a cluster)")
	fs.StringVar(&b.account, "account", "", "account of kiln's streams when --config defines accounts (default KILN)")
	fs.BoolVar(&b.leaf, "leaf", getenv(envLeaf, "") == "1", "leaf node of a central broker (--config with leafnodes remotes): no JetStream here ($"+envLeaf+"=1)")
}

// slotsFlag registers --slots, the K/V slots of each chat model
// (llm.Options.Slots): 0 or 1 is one job at a time.
func slotsFlag(fs *flag.FlagSet) *int {
	n, _ := strconv.Atoi(getenv(envSlots, "1"))
	return fs.Int("slots", n, fmt.Sprintf("K/V slots of each chat model: so many of its jobs run at once, 1..%d ($%s)", llm.MaxSlots, envSlots))
}

// checkSlots refuses a --slots outside 0..llm.MaxSlots.
func checkSlots(n int) error {
	if n < 0 || n > llm.MaxSlots {
		return fmt.Errorf("--slots is %d: it must be 1 to %d (%s)", n, llm.MaxSlots, envSlots)
	}
	return nil
}

// unservedGrace registers --unserved-grace, the grace of the janitor that
// kiln up, kiln broker and kiln worker run (broker/janitor).
func unservedGrace(fs *flag.FlagSet) *time.Duration {
	grace := janitor.DefaultGrace
	if d, err := time.ParseDuration(os.Getenv(envUnservedGrace)); err == nil && d > 0 {
		grace = d
	}
	return fs.Duration("unserved-grace", grace,
		"how long a job for a model no live worker serves waits for one before it is answered no_worker ($"+envUnservedGrace+")")
}
