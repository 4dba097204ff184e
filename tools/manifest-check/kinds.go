package main

// The kinds manifest-check knows, by apiVersion and kind, each mapped to the Go type that
// the API server (or the operator's controller) decodes it into. A kind missing here is an
// error, not a pass: a typo in apiVersion must not turn the check off.

import (
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

type gvk struct{ apiVersion, kind string }

// newObject returns a fresh pointer for each known kind.
var kinds = map[gvk]func() any{
	{"v1", "ConfigMap"}:      func() any { return &corev1.ConfigMap{} },
	{"v1", "Namespace"}:      func() any { return &corev1.Namespace{} },
	{"v1", "Pod"}:            func() any { return &corev1.Pod{} },
	{"v1", "Secret"}:         func() any { return &corev1.Secret{} },
	{"v1", "Service"}:        func() any { return &corev1.Service{} },
	{"v1", "ServiceAccount"}: func() any { return &corev1.ServiceAccount{} },

	{"apps/v1", "DaemonSet"}:   func() any { return &appsv1.DaemonSet{} },
	{"apps/v1", "Deployment"}:  func() any { return &appsv1.Deployment{} },
	{"apps/v1", "StatefulSet"}: func() any { return &appsv1.StatefulSet{} },

	{"autoscaling/v2", "HorizontalPodAutoscaler"}: func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	{"batch/v1", "CronJob"}:                       func() any { return &batchv1.CronJob{} },
	{"batch/v1", "Job"}:                           func() any { return &batchv1.Job{} },
	{"networking/v1", "NetworkPolicy"}:            func() any { return &networkingv1.NetworkPolicy{} },
	{"policy/v1", "PodDisruptionBudget"}:          func() any { return &policyv1.PodDisruptionBudget{} },

	{"rbac.authorization.k8s.io/v1", "ClusterRole"}:        func() any { return &rbacv1.ClusterRole{} },
	{"rbac.authorization.k8s.io/v1", "ClusterRoleBinding"}: func() any { return &rbacv1.ClusterRoleBinding{} },
	{"rbac.authorization.k8s.io/v1", "Role"}:               func() any { return &rbacv1.Role{} },
	{"rbac.authorization.k8s.io/v1", "RoleBinding"}:        func() any { return &rbacv1.RoleBinding{} },

	{"keda.sh/v1alpha1", "ScaledObject"}:                 func() any { return &kedav1alpha1.ScaledObject{} },
	{"keda.sh/v1alpha1", "ScaledJob"}:                    func() any { return &kedav1alpha1.ScaledJob{} },
	{"keda.sh/v1alpha1", "TriggerAuthentication"}:        func() any { return &kedav1alpha1.TriggerAuthentication{} },
	{"keda.sh/v1alpha1", "ClusterTriggerAuthentication"}: func() any { return &kedav1alpha1.ClusterTriggerAuthentication{} },

	{"monitoring.coreos.com/v1", "PodMonitor"}:     func() any { return &monitoringv1.PodMonitor{} },
	{"monitoring.coreos.com/v1", "PrometheusRule"}: func() any { return &monitoringv1.PrometheusRule{} },
	{"monitoring.coreos.com/v1", "ServiceMonitor"}: func() any { return &monitoringv1.ServiceMonitor{} },
}
