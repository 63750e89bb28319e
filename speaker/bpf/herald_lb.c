/* Herald's eBPF service map: attach points only; the logic lives in the headers under lib/.
 * Both programs go on every interface that carries service traffic (TC ingress and egress). */
#include <linux/if_packet.h>

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/lb.h"
#include "lib/tunnel.h"
#include "lib/sweep.h"

/* Ingress: packets another node tunnelled here (DSR) are unwrapped and go to their local
 * backend; replies of SNATed flows are translated back; packets to a frontend go to their
 * backend. */
SEC("classifier/herald_ingress")
int herald_ingress(struct __sk_buff *skb)
{
	struct lb_tuple t;
	struct lb_frontend *fe = 0;

	/* A frame sent to another host's MAC reaches this one only because a switch flooded it
	 * (unknown unicast: the owner's port went down, or its MAC aged out of the table). Every
	 * node would forward a copy; the kernel drops it, and so does Herald. */
	if (skb->pkt_type == PACKET_OTHERHOST)
		return TC_ACT_OK;

	int tunnelled = lb_decap(skb, &t, &fe);
	if (tunnelled < 0)
		return TC_ACT_SHOT;
	if (!tunnelled) {
		if (lb_parse(skb, &t) < 0)
			return TC_ACT_OK;
		fe = lb_frontend_of(&t);
	}
	struct lb_config *cfg = lb_config();
	if (!cfg)
		return TC_ACT_OK;
	/* The only replies translated on ingress are those of SNATed flows, addressed to a SNAT
	 * port. Every other packet skips the reverse table: a miss there is the main cost Herald
	 * puts on a node's traffic that is not its own. */
	if (!tunnelled && lb_snat_port_in_range(cfg, t.dport)) {
		int action;
		if (lb_reverse(skb, &t, cfg, 1, &action))
			return action;
	}
	if (!fe)
		return TC_ACT_OK;
	return lb_forward(skb, &t, fe, cfg, tunnelled);
}

/* Egress: replies from local backends leave with the frontend as their source. Only packets
 * from a backend's port are looked up. */
SEC("classifier/herald_egress")
int herald_egress(struct __sk_buff *skb)
{
	struct lb_tuple t;

	if (lb_parse(skb, &t) < 0 || !lb_reply_port(t.sport))
		return TC_ACT_OK;
	struct lb_config *cfg = lb_config();
	if (!cfg)
		return TC_ACT_OK;
	int action;
	if (lb_reverse(skb, &t, cfg, 0, &action))
		return action;
	return TC_ACT_OK;
}

/* Not attached anywhere: the speaker's sweep runs it with a batch of conntrack entries it found
 * over, which it removes if they still are (lib/sweep.h). */
SEC("classifier/herald_sweep")
int herald_sweep(struct __sk_buff *skb)
{
	return lb_sweep(skb);
}

char LICENSE[] SEC("license") = "GPL";
