package auth

import (
	"fmt"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// Permissions are what a user may publish and subscribe to, as
// nats-server's permissions block lists them.
type Permissions struct {
	Publish   []string
	Subscribe []string
	// AllowResponses lets the user answer each request it receives once, on
	// the requester's reply subject.
	AllowResponses bool
}

// Permissions returns what id may do with the subjects, streams and buckets
// of topo; nil means full rights in the account (admin).
//
//   - controllers publish jobs and cancels under their own id only (the
//     client token of schema.Subjects.ClientJob and ClientCancel, and their
//     own keys of the cancel bucket), read the worker registry (the "no
//     live worker" check) and their own results, and subscribe to their
//     own reply subjects and inboxes only. The job subject's token is how
//     a worker knows whose job it is;
//   - workers take jobs and publish replies, results, events and their
//     registry entry, and answer the requests they serve;
//   - observers read events, the registry and queue depths, and ask
//     workers for their status.
func (id Identity) Permissions(topo topology.Config) *Permissions {
	s := topo.Subjects()
	jobs, results, events := topo.JobsStream(), topo.ResultsStream(), topo.EventsStream()
	workersKV, cancelKV := topology.KVStream(topo.WorkersBucket()), topology.KVStream(topo.CancelBucket())
	api := topology.APISubject
	switch id.Role {
	case RoleController:
		pub, sub := clientRights(topo, id.Name)
		return &Permissions{
			Publish:   append(pub, controllerShared(topo)...),
			Subscribe: append(sub, topology.Inboxes(id.Name)),
		}
	case RoleGateway:
		var pub, sub []string
		for _, c := range append([]string{id.Name}, id.Clients...) {
			p, s := clientRights(topo, c)
			pub, sub = append(pub, p...), append(sub, s...)
			p, s = followRights(topo, c)
			pub, sub = append(pub, p...), append(sub, s...)
		}
		obs := Identity{Name: id.Name, Role: RoleObserver}.Permissions(topo)
		return &Permissions{
			Publish:   dedupe(append(append(pub, controllerShared(topo)...), obs.Publish...)),
			Subscribe: dedupe(append(sub, obs.Subscribe...)),
		}
	case RoleWorker:
		pub := []string{
			s.Replies(), topology.Inboxes(""), s.Results(), s.Events(),
			topology.KVKey(topo.WorkersBucket(), "*"),
			api(topology.APIAccountInfo), api(topology.APIStreamInfo, "*"),
			api(topology.APIConsumerCreate, jobs, ">"), api(topology.APIConsumerInfo, jobs, ">"),
			api(topology.APIConsumerNext, jobs, ">"), topology.AckSubjects(jobs),
			api(topology.APIStreamMsgGet, jobs), api(topology.APIStreamMsgDelete, jobs),
			api(topology.APIDirectGet, results, ">"), api(topology.APIStreamMsgGet, results),
			topology.FlowControlSubjects,
		}
		pub = append(pub, readStream(cancelKV)...)
		pub = append(pub, readStream(workersKV)...) // its janitor: what the fleet serves (broker/janitor)
		return &Permissions{
			Publish: pub,
			Subscribe: []string{
				s.Wakes(), s.Cancels(), topology.Inboxes(""),
				topology.MaxDeliveriesAdvisory(jobs, "*"),
				topology.ServiceSubjects, s.Statuses(), // the NATS micro-service framework: `nats micro ls`, status requests
			},
			// answers to the requests it serves (`nats micro`): the requester's inbox, once
			AllowResponses: true,
		}
	case RoleObserver:
		pub := []string{
			api(topology.APIAccountInfo), api(topology.APIStreamInfo, jobs), api(topology.APIConsumerList, jobs),
			topology.FlowControlSubjects, topology.ServiceSubjects, s.Statuses(),
		}
		pub = append(pub, readStream(workersKV)...)
		return &Permissions{
			Publish:   append(pub, readStream(events)...),
			Subscribe: []string{s.Events(), topology.Inboxes(id.Name)},
		}
	default: // RoleAdmin
		return nil
	}
}

// clientRights are what acting as client takes: publishing its jobs,
// cancels and cancel keys, reading its results, hearing its replies.
func clientRights(topo topology.Config, client string) (pub, sub []string) {
	s := topo.Subjects()
	return []string{
			s.ClientJobs(client), s.ClientCancels(client), topology.KVKey(topo.CancelBucket(), schema.JobKey(client, "*")),
			topology.APISubject(topology.APIDirectGet, topo.ResultsStream(), s.ClientResults(client)),
		},
		[]string{s.ClientReplies(client)}
}

// followRights are what following client's jobs as they pass takes (the
// gateway's dashboard and metrics, gateway/watch): hearing their wakes
// (headers only, no body) and reading their results as they are stored,
// through a consumer of one's own filtered on the client's results.
func followRights(topo topology.Config, client string) (pub, sub []string) {
	s, results, api := topo.Subjects(), topo.ResultsStream(), topology.APISubject
	return []string{
			api(topology.APIConsumerCreate, results, "*", s.ClientResults(client)),
			api(topology.APIConsumerDelete, results, "*"), api(topology.APIConsumerInfo, results, "*"),
			api(topology.APIConsumerNext, results, "*"),
		},
		[]string{s.ClientWakes(client)}
}

// controllerShared is what every controller needs besides its own
// subjects: JetStream's account info, the cancel bucket and results
// stream infos, flow control, and reading the worker registry.
func controllerShared(topo topology.Config) []string {
	api := topology.APISubject
	pub := []string{
		api(topology.APIAccountInfo), api(topology.APIStreamInfo, topology.KVStream(topo.CancelBucket())),
		api(topology.APIStreamInfo, topo.ResultsStream()), topology.FlowControlSubjects,
	}
	return append(pub, readStream(topology.KVStream(topo.WorkersBucket()))...)
}

// dedupe drops repeated subjects, keeping the first of each.
func dedupe(l []string) []string {
	seen := map[string]bool{}
	out := l[:0:0]
	for _, s := range l {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// readStream is what reading stream takes: its info, an ordered or durable
// consumer of one's own, direct and stored message gets. A key-value
// bucket's watch and get read its stream (topology.KVStream).
func readStream(stream string) []string {
	api := topology.APISubject
	return []string{
		api(topology.APIStreamInfo, stream),
		api(topology.APIConsumerCreate, stream), api(topology.APIConsumerCreate, stream, ">"),
		api(topology.APIConsumerDelete, stream, ">"), api(topology.APIConsumerInfo, stream, ">"),
		api(topology.APIConsumerNext, stream, ">"),
		api(topology.APIDirectGet, stream, ">"), api(topology.APIStreamMsgGet, stream),
	}
}

// InProcessUser makes the broker's own user in account acc (nil: the
// global account): full rights, in-process connections only, a new nkey
// that is never written down. With authorization on, an in-process
// connection must log in too: the broker signs its own with kp.
func InProcessUser(acc *server.Account) (*server.NkeyUser, nkeys.KeyPair, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, nil, fmt.Errorf("auth: in-process user: %w", err)
	}
	pub, _ := kp.PublicKey()
	return &server.NkeyUser{
		Nkey:                   pub,
		Account:                acc,
		AllowedConnectionTypes: map[string]struct{}{jwt.ConnectionTypeInProcess: {}},
	}, kp, nil
}
