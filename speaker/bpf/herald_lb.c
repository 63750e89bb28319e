/* Herald's eBPF service map: attach points only; the logic lives in the headers under lib/.
 * Both programs go on every interface that carries service traffic (TC ingress and egress). */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/lb.h"

/* Ingress: replies of SNATed flows come back here; new and established flows to a frontend
 * are translated to their backend. */
SEC("classifier/herald_ingress")
int herald_ingress(struct __sk_buff *skb)
{
	struct lb_tuple t;

	if (lb_parse(skb, &t) < 0)
		return TC_ACT_OK;
	int reply = lb_reverse(skb, &t);
	if (reply < 0)
		return TC_ACT_SHOT;
	if (reply > 0)
		return TC_ACT_OK;
	return lb_forward(skb, &t);
}

/* Egress: replies from local backends leave with the frontend as their source. */
SEC("classifier/herald_egress")
int herald_egress(struct __sk_buff *skb)
{
	struct lb_tuple t;

	if (lb_parse(skb, &t) < 0)
		return TC_ACT_OK;
	if (lb_reverse(skb, &t) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
