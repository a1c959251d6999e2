package topology

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kiln-project/kiln/schema"
)

func TestNATSSubjects(t *testing.T) {
	c := Config{}
	jobs, results := c.JobsStream(), c.ResultsStream()
	for _, tc := range []struct {
		got, want string
		server    string // the same subject as nats-server spells it, where it exports the template
	}{
		{APISubject(APIAccountInfo), "$JS.API.INFO", server.JSApiAccountInfo},
		{APISubject(APIStreamInfo, jobs), "$JS.API.STREAM.INFO.KILN_JOBS", fmt.Sprintf(server.JSApiStreamInfoT, jobs)},
		{APISubject(APIStreamInfo, "*"), "$JS.API.STREAM.INFO.*", ""},
		{APISubject(APIStreamMsgGet, results), "$JS.API.STREAM.MSG.GET.KILN_RESULTS", fmt.Sprintf(server.JSApiMsgGetT, results)},
		{APISubject(APIStreamMsgDelete, jobs), "$JS.API.STREAM.MSG.DELETE.KILN_JOBS", fmt.Sprintf(server.JSApiMsgDeleteT, jobs)},
		{APISubject(APIConsumerCreate, jobs), "$JS.API.CONSUMER.CREATE.KILN_JOBS", fmt.Sprintf(server.JSApiConsumerCreateT, jobs)},
		{APISubject(APIConsumerCreate, jobs, "c", "kiln.jobs.chat.m.high"), "$JS.API.CONSUMER.CREATE.KILN_JOBS.c.kiln.jobs.chat.m.high",
			fmt.Sprintf(server.JSApiConsumerCreateExT, jobs, "c", "kiln.jobs.chat.m.high")},
		{APISubject(APIConsumerDelete, jobs, "c"), "$JS.API.CONSUMER.DELETE.KILN_JOBS.c", fmt.Sprintf(server.JSApiConsumerDeleteT, jobs, "c")},
		{APISubject(APIConsumerInfo, jobs, ">"), "$JS.API.CONSUMER.INFO.KILN_JOBS.>", fmt.Sprintf(server.JSApiConsumerInfoT, jobs, ">")},
		{APISubject(APIConsumerList, jobs), "$JS.API.CONSUMER.LIST.KILN_JOBS", fmt.Sprintf(server.JSApiConsumerListT, jobs)},
		{APISubject(APIConsumerNext, jobs, "c"), "$JS.API.CONSUMER.MSG.NEXT.KILN_JOBS.c", fmt.Sprintf(server.JSApiRequestNextT, jobs, "c")},
		{APISubject(APIDirectGet, results), "$JS.API.DIRECT.GET.KILN_RESULTS", fmt.Sprintf(server.JSDirectMsgGetT, results)},
		{APISubject(APIDirectGet, results, c.Subjects().ClientResults("room-1")), "$JS.API.DIRECT.GET.KILN_RESULTS.kiln.results.*.room-1",
			fmt.Sprintf(server.JSDirectGetLastBySubjectT, results, "kiln.results.*.room-1")},
		{AckSubjects(jobs), "$JS.ACK.KILN_JOBS.>", ""},
		{FlowControlSubjects, "$JS.FC.>", ""},
		{MaxDeliveriesAdvisory(jobs, "*"), "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.KILN_JOBS.*", server.JSAdvisoryConsumerMaxDeliveryExceedPre + ".KILN_JOBS.*"},
		{KVStream(c.WorkersBucket()), "KV_kiln_workers", ""},
		{KVKey(c.CancelBucket(), "*"), "$KV.kiln_cancel.*", ""},
		{KVStream(Config{Prefix: "art"}.CancelBucket()), "KV_art_cancel", ""},
		{InboxPrefix("room-1"), "_INBOX.room-1", ""},
		{schema.InboxPrefix + "room-1", InboxPrefix("room-1"), ""}, // the reply rule's spelling of an inbox
		{strings.Join(c.JobSubjects(), " "), "kiln.jobs.*.*.* kiln.jobs.*.*.*.*", ""},
		{Inboxes("room-1"), "_INBOX.room-1.>", ""},
		{Inboxes(""), "_INBOX.>", ""},
		{ServiceSubjects, "$SRV.>", ""},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
		if tc.server != "" && tc.server != tc.want {
			t.Errorf("%s: nats-server spells it %s", tc.want, tc.server)
		}
	}
}
