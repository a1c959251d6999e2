package topology

import (
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// NATS's own subjects that kiln names: JetStream API requests, acks, flow
// control and advisories, key-value subjects, inboxes and the micro-service
// framework. Broker permissions (broker/auth) list them and the worker
// subscribes to some; these builders are their one spelling in kiln. Where
// a subject is a permission, any token may be a wildcard ("*", ">").
// kiln's own subjects are built by schema.Subjects.

// APIPrefix begins every JetStream API request subject.
const APIPrefix = "$JS.API"

// An APIRequest is one JetStream API request: the tokens of its subject
// between APIPrefix and the stream name.
type APIRequest string

// The JetStream API requests that kiln's permissions name.
const (
	APIAccountInfo     APIRequest = "INFO"
	APIStreamInfo      APIRequest = "STREAM.INFO"
	APIStreamMsgGet    APIRequest = "STREAM.MSG.GET"
	APIStreamMsgDelete APIRequest = "STREAM.MSG.DELETE"
	APIConsumerCreate  APIRequest = "CONSUMER.CREATE"
	APIConsumerDelete  APIRequest = "CONSUMER.DELETE"
	APIConsumerInfo    APIRequest = "CONSUMER.INFO"
	APIConsumerList    APIRequest = "CONSUMER.LIST"
	APIConsumerNext    APIRequest = "CONSUMER.MSG.NEXT"
	APIDirectGet       APIRequest = "DIRECT.GET"
)

// APISubject is the subject of request r on tokens (a stream name, then a
// consumer name or a subject): APISubject(APIConsumerInfo, "KILN_JOBS", "*")
// is "$JS.API.CONSUMER.INFO.KILN_JOBS.*".
func APISubject(r APIRequest, tokens ...string) string {
	return strings.Join(append([]string{APIPrefix, string(r)}, tokens...), ".")
}

// AckSubjects is the wildcard of the ack subjects of stream's messages:
// $JS.ACK.<stream>.>.
func AckSubjects(stream string) string { return "$JS.ACK." + stream + ".>" }

// FlowControlSubjects is the wildcard of JetStream's flow control subjects.
const FlowControlSubjects = "$JS.FC.>"

// MaxDeliveriesAdvisory is the advisory JetStream publishes when a message of
// stream runs out of deliveries on consumer:
// $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>.
func MaxDeliveriesAdvisory(stream, consumer string) string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + stream + "." + consumer
}

// KVStream is the name of the stream that holds bucket: KV_<bucket>.
func KVStream(bucket string) string { return "KV_" + bucket }

// KVKey is the subject of key in bucket: $KV.<bucket>.<key>.
func KVKey(bucket, key string) string { return "$KV." + bucket + "." + key }

// InboxPrefix is the prefix of client's inboxes, _INBOX.<client>, for
// nats.CustomInboxPrefix: broker permissions let a controller read its own
// inboxes only.
func InboxPrefix(client string) string { return nats.InboxPrefix + client }

// Inboxes is the wildcard of client's inboxes, _INBOX.<client>.>; of every
// inbox, _INBOX.>, when client is "".
func Inboxes(client string) string {
	if client == "" {
		return nats.InboxPrefix + ">"
	}
	return InboxPrefix(client) + ".>"
}

// ServiceSubjects is the wildcard of the NATS micro-service framework's
// requests ($SRV.>: `nats micro ls`, info, stats, ping).
const ServiceSubjects = micro.APIPrefix + ".>"
